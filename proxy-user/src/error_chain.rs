//! One line per failure, each cause said once.
//!
//! Library errors often print their source inside their own message *and* expose it as
//! `source()` (aya's `map error: failed to create map X` over `failed to create map X`), so
//! walking the chain naively repeats text. Here a message that ends with its cause's text keeps
//! only its own part.

/// `outer: cause: root cause`, with repeated text dropped.
pub fn describe(error: &anyhow::Error) -> String {
    describe_messages(error.chain().map(ToString::to_string).collect())
}

fn describe_messages(messages: Vec<String>) -> String {
    let mut parts: Vec<String> = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let mut own = message.as_str();
        if let Some(cause) = messages.get(i + 1) {
            if let Some(head) = own.strip_suffix(cause.as_str()) {
                own = head.trim_end().trim_end_matches(':').trim_end();
            }
        }
        // A cause already said word for word by the part before it adds nothing.
        if own.is_empty() || parts.last().is_some_and(|p| p.ends_with(own)) {
            continue;
        }
        parts.push(own.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nested_messages_are_said_once() {
        let chain = strings(&[
            "attaching eBPF programs to /sys/fs/cgroup/x",
            "loading the eBPF object: map error: failed to create map `M`: Operation not permitted",
            "map error: failed to create map `M`: Operation not permitted",
            "failed to create map `M`: Operation not permitted",
            "Operation not permitted",
        ]);
        assert_eq!(
            describe_messages(chain),
            "attaching eBPF programs to /sys/fs/cgroup/x: loading the eBPF object: map error: \
             failed to create map `M`: Operation not permitted"
        );
    }

    #[test]
    fn a_message_that_omits_its_cause_keeps_both() {
        let chain = strings(&[
            "loading the eBPF object: map error: failed to create map `M`",
            "map error: failed to create map `M`",
            "failed to create map `M`",
            "Operation not permitted (os error 1)",
        ]);
        assert_eq!(
            describe_messages(chain),
            "loading the eBPF object: map error: failed to create map `M`: Operation not \
             permitted (os error 1)"
        );
    }

    #[test]
    fn independent_causes_are_all_kept() {
        let err = anyhow::anyhow!("connection refused")
            .context("dialling 10.0.0.1:80")
            .context("starting");
        assert_eq!(
            describe(&err),
            "starting: dialling 10.0.0.1:80: connection refused"
        );
    }
}
