//! The server name of a TLS ClientHello, read without terminating TLS.
//!
//! Only as much of TLS as routing needs: the record layer (handshake records, possibly several
//! carrying one ClientHello), the ClientHello's fixed fields, and the `server_name` extension
//! (RFC 6066 §3). Nothing is decrypted or answered. Every length is checked against what is left,
//! so hostile bytes end in [`Hello::Invalid`], never in a panic or an unbounded allocation.

use std::borrow::Cow;

/// Largest ClientHello accepted, counting record headers (Envoy's TLS inspector reads at most 64 KiB).
pub const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024;

/// Largest TLS plaintext record body (RFC 8446 §5.1).
const MAX_RECORD_BODY: usize = 1 << 14;
const RECORD_HEADER: usize = 5;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// A DNS name is at most 255 bytes.
const MAX_HOST_NAME: usize = 255;

/// What a prefix of a connection says about its ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// The bytes so far are a valid start of a ClientHello; read more.
    NeedMore,
    /// A complete ClientHello; its `server_name` host name, lower-cased, if it sent one.
    Complete { sni: Option<String> },
    /// Not a TLS ClientHello, a malformed one, or one over [`MAX_CLIENT_HELLO_BYTES`].
    Invalid(&'static str),
}

/// Parse the ClientHello at the start of `buf` (the bytes the client sent so far).
pub fn parse(buf: &[u8]) -> Hello {
    let message = match handshake_message(buf) {
        Ok(Some(m)) => m,
        Ok(None) => return Hello::NeedMore,
        Err(reason) => return Hello::Invalid(reason),
    };
    match server_name(&message) {
        Ok(sni) => Hello::Complete { sni },
        Err(reason) => Hello::Invalid(reason),
    }
}

/// The first handshake message's body, reassembled from as many handshake records as it spans;
/// `None` while more bytes are needed.
fn handshake_message(buf: &[u8]) -> Result<Option<Cow<'_, [u8]>>, &'static str> {
    let mut rest = buf;
    // Set once the message spans more than one record.
    let mut assembled: Option<Vec<u8>> = None;
    let mut first = true;
    loop {
        let mut header = Reader::new(rest);
        let Some(content_type) = header.u8() else {
            return Ok(None);
        };
        if content_type != CONTENT_TYPE_HANDSHAKE {
            return Err(if first {
                "not a TLS handshake record"
            } else {
                "a non-handshake record inside the ClientHello"
            });
        }
        match header.u8() {
            None => return Ok(None),
            Some(3) => {}
            Some(_) => return Err("not a TLS record version"),
        }
        // The minor version is not checked: clients send 3.0 to 3.4 in the record header.
        if header.u8().is_none() {
            return Ok(None);
        }
        let Some(len) = header.u16() else {
            return Ok(None);
        };
        let len = usize::from(len);
        if len == 0 || len > MAX_RECORD_BODY {
            return Err("bad TLS record length");
        }
        let Some(body) = header.bytes(len) else {
            // A partial record: wait for the rest of it.
            return Ok(None);
        };
        rest = header.rest();
        let fragment: &[u8] = match &mut assembled {
            None => body,
            Some(v) => {
                v.extend_from_slice(body);
                v
            }
        };
        first = false;
        let mut message = Reader::new(fragment);
        match message.u8() {
            Some(HANDSHAKE_CLIENT_HELLO) => {}
            Some(_) => return Err("the first handshake message is not a ClientHello"),
            None => return Err("empty handshake fragment"),
        }
        let Some(hello_len) = message.u24() else {
            // The 4-byte handshake header itself is split across records.
            assembled.get_or_insert_with(|| body.to_vec());
            continue;
        };
        let hello_len = usize::try_from(hello_len).map_err(|_| "ClientHello too large")?;
        // Records cost at least their headers on top of the message.
        if hello_len.saturating_add(4 + RECORD_HEADER) > MAX_CLIENT_HELLO_BYTES {
            return Err("ClientHello too large");
        }
        if message.bytes(hello_len).is_some() {
            let whole = 4..4 + hello_len;
            return Ok(Some(match assembled {
                None => Cow::Borrowed(body.get(whole).ok_or("short ClientHello")?),
                Some(mut v) => {
                    v.truncate(whole.end);
                    v.drain(..whole.start);
                    Cow::Owned(v)
                }
            }));
        }
        if buf.len() - rest.len() >= MAX_CLIENT_HELLO_BYTES {
            return Err("ClientHello too large");
        }
        assembled.get_or_insert_with(|| body.to_vec());
    }
}

/// The `server_name` host name of a ClientHello body (after the handshake header).
fn server_name(hello: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader::new(hello);
    let version = r.u16().ok_or("short ClientHello")?;
    if version >> 8 != 3 {
        return Err("not a TLS ClientHello version");
    }
    r.bytes(32).ok_or("short ClientHello random")?;
    let session_id = r.vec8().ok_or("short session id")?;
    if session_id.len() > 32 {
        return Err("session id over 32 bytes");
    }
    let suites = r.vec16().ok_or("short cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad cipher suite list");
    }
    let compression = r.vec8().ok_or("short compression methods")?;
    if compression.is_empty() {
        return Err("no compression method");
    }
    if r.is_empty() {
        // TLS 1.0-1.2 clients may send no extensions at all.
        return Ok(None);
    }
    let mut extensions = Reader::new(r.vec16().ok_or("short extensions")?);
    if !r.is_empty() {
        return Err("bytes after the extensions");
    }
    while !extensions.is_empty() {
        let kind = extensions.u16().ok_or("short extension header")?;
        let data = extensions.vec16().ok_or("short extension")?;
        if kind == EXTENSION_SERVER_NAME {
            return host_name(data);
        }
    }
    Ok(None)
}

/// The `host_name` entry of a `server_name` extension.
fn host_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut ext = Reader::new(data);
    let mut list = Reader::new(ext.vec16().ok_or("short server name list")?);
    if !ext.is_empty() {
        return Err("bytes after the server name list");
    }
    while !list.is_empty() {
        let name_type = list.u8().ok_or("short server name")?;
        let name = list.vec16().ok_or("short server name")?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        // RFC 6066: ASCII, no trailing dot; reject what no DNS name can be.
        if name.is_empty()
            || name.len() > MAX_HOST_NAME
            || !name.iter().all(|b| b.is_ascii_graphic())
        {
            return Err("invalid server name");
        }
        let name = std::str::from_utf8(name).map_err(|_| "invalid server name")?;
        return Ok(Some(name.to_ascii_lowercase()));
    }
    Ok(None)
}

/// A bounds-checked cursor: every read returns `None` instead of reading past the end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.buf.split_at_checked(n)?;
        self.buf = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }

    fn u24(&mut self) -> Option<u32> {
        let b = self.bytes(3)?;
        Some(u32::from_be_bytes([0, *b.first()?, *b.get(1)?, *b.get(2)?]))
    }

    /// A vector with a 1-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }

    /// A vector with a 2-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body (after the handshake header) with the given extensions block.
    fn hello_body(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7u8; 32]);
        b.push(32);
        b.extend_from_slice(&[9u8; 32]);
        b.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        b.extend_from_slice(&[1, 0]);
        if let Some(ext) = extensions {
            b.extend_from_slice(&u16::try_from(ext.len()).expect("len").to_be_bytes());
            b.extend_from_slice(ext);
        }
        b
    }

    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend_from_slice(&u16::try_from(data.len()).expect("len").to_be_bytes());
        e.extend_from_slice(data);
        e
    }

    fn sni_extension(name: &str) -> Vec<u8> {
        let mut entry = vec![NAME_TYPE_HOST_NAME];
        entry.extend_from_slice(&u16::try_from(name.len()).expect("len").to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut list = u16::try_from(entry.len())
            .expect("len")
            .to_be_bytes()
            .to_vec();
        list.extend_from_slice(&entry);
        extension(EXTENSION_SERVER_NAME, &list)
    }

    fn handshake(body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).expect("len").to_be_bytes();
        let mut h = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
        h.extend_from_slice(body);
        h
    }

    /// `message` in records of at most `chunk` bytes each.
    fn records(message: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(chunk) {
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&u16::try_from(part.len()).expect("len").to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    fn client_hello(name: &str) -> Vec<u8> {
        // Another extension first, as real clients send several.
        let mut ext = extension(0x000a, &[0, 2, 0, 0x1d]);
        ext.extend_from_slice(&sni_extension(name));
        records(&handshake(&hello_body(Some(&ext))), MAX_RECORD_BODY)
    }

    fn complete(sni: Option<&str>) -> Hello {
        Hello::Complete {
            sni: sni.map(str::to_string),
        }
    }

    #[test]
    fn reads_the_server_name_in_every_shape() {
        let body = hello_body(Some(&sni_extension("A.Example.com")));
        let message = handshake(&body);
        let cases: Vec<(&str, Vec<u8>, Hello)> = vec![
            (
                "one record",
                client_hello("a.example.com"),
                complete(Some("a.example.com")),
            ),
            (
                "upper case is lowered",
                records(&message, 1 << 14),
                complete(Some("a.example.com")),
            ),
            (
                "one record per 7 bytes",
                records(&message, 7),
                complete(Some("a.example.com")),
            ),
            (
                "handshake header split over records",
                records(&message, 2),
                complete(Some("a.example.com")),
            ),
            (
                "no extensions (TLS 1.0-1.2)",
                records(&handshake(&hello_body(None)), 1 << 14),
                complete(None),
            ),
            (
                "extensions without server_name",
                records(
                    &handshake(&hello_body(Some(&extension(0x002b, &[2, 3, 4])))),
                    1 << 14,
                ),
                complete(None),
            ),
            (
                "a trailing record after the hello is ignored",
                [client_hello("b.example.com"), vec![23, 3, 3, 0, 1, 0]].concat(),
                complete(Some("b.example.com")),
            ),
            ("empty", Vec::new(), Hello::NeedMore),
            ("record header only", vec![22, 3, 1], Hello::NeedMore),
            (
                "HTTP",
                b"GET / HTTP/1.1\r\n".to_vec(),
                Hello::Invalid("not a TLS handshake record"),
            ),
            (
                "application data first",
                vec![23, 3, 3, 0, 1, 0],
                Hello::Invalid("not a TLS handshake record"),
            ),
            (
                "SSLv2-style hello",
                vec![0x80, 0x2e, 1, 3, 1],
                Hello::Invalid("not a TLS handshake record"),
            ),
            (
                "server hello",
                records(&[2, 0, 0, 1, 0], 1 << 14),
                Hello::Invalid("the first handshake message is not a ClientHello"),
            ),
            (
                "zero-length record",
                vec![22, 3, 1, 0, 0],
                Hello::Invalid("bad TLS record length"),
            ),
            (
                "oversized record",
                vec![22, 3, 1, 0x40, 0x01],
                Hello::Invalid("bad TLS record length"),
            ),
            (
                "alert inside the hello",
                [
                    records(&message, 20).get(..25).expect("prefix").to_vec(),
                    vec![21, 3, 3, 0, 2, 2, 40],
                ]
                .concat(),
                Hello::Invalid("a non-handshake record inside the ClientHello"),
            ),
            (
                "hello longer than the cap",
                vec![22, 3, 1, 0, 4, 1, 0x01, 0x00, 0x00],
                Hello::Invalid("ClientHello too large"),
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(parse(&bytes), want, "{name}");
        }
    }

    #[test]
    fn rejects_malformed_server_names() {
        for name in ["", "a b.example.com", "a\u{0}b", &"x".repeat(256)] {
            let bytes = client_hello(name);
            assert_eq!(
                parse(&bytes),
                Hello::Invalid("invalid server name"),
                "{name:?}"
            );
        }
    }

    #[test]
    fn every_prefix_of_a_hello_needs_more() {
        let body = hello_body(Some(&sni_extension("a.example.com")));
        for chunk in [1 << 14, 5, 1] {
            let bytes = records(&handshake(&body), chunk);
            for end in 0..bytes.len() {
                assert_eq!(
                    parse(bytes.get(..end).expect("prefix")),
                    Hello::NeedMore,
                    "chunk {chunk}, {end} of {} bytes",
                    bytes.len()
                );
            }
            assert_eq!(parse(&bytes), complete(Some("a.example.com")));
        }
    }

    /// xorshift: deterministic noise without a dependency.
    fn noise(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let valid = client_hello("a.example.com");
        for round in 0..20_000u32 {
            let mut bytes = if round % 2 == 0 {
                // Random bytes behind valid record and handshake headers, so the ClientHello and
                // extension parsers see them.
                let n = usize::try_from(noise(&mut seed) % 600).unwrap_or(0);
                let body: Vec<u8> = (0..n).map(|_| noise(&mut seed) as u8).collect();
                records(&handshake(&body), 1 + n % 300)
            } else {
                valid.clone()
            };
            // Flip, truncate and corrupt lengths of the valid hello.
            for _ in 0..(noise(&mut seed) % 8) {
                if bytes.is_empty() {
                    break;
                }
                let at = usize::try_from(noise(&mut seed)).unwrap_or(0) % bytes.len();
                if let Some(b) = bytes.get_mut(at) {
                    *b = noise(&mut seed) as u8;
                }
            }
            let cut = usize::try_from(noise(&mut seed)).unwrap_or(0) % (bytes.len() + 1);
            let _ = parse(bytes.get(..cut).unwrap_or(&bytes));
            let _ = parse(&bytes);
        }
    }
}
