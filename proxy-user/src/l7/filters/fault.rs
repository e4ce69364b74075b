//! Fault injection (`HTTPFaultInjection`), the first filter: delay and abort are decided by two
//! independent draws; a delay runs before the route timeout starts, an abort answers locally and
//! nothing reaches the upstream (Envoy's fault filter, §1.12).

use std::time::Duration;

use crate::policy::Fault;

/// An abort to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abort {
    /// `httpStatus`.
    Http(u16),
    /// `grpcStatus` (numeric code): a trailers-only gRPC response.
    Grpc(u32),
}

/// What the fault filter does to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultAction {
    /// Pause before forwarding.
    pub delay: Option<Duration>,
    /// Answer locally after the delay.
    pub abort: Option<Abort>,
}

/// Decide the faults of one request with uniform draws in `[0, 100)` for the delay and the abort.
/// No `percentage` means never (Istio's default fraction is 0).
pub fn decide(fault: &Fault, delay_draw: f64, abort_draw: f64) -> FaultAction {
    let fires = |pct: Option<f64>, draw: f64| pct.is_some_and(|p| draw < p);
    FaultAction {
        delay: fault
            .delay
            .as_ref()
            .filter(|d| fires(d.percentage, delay_draw))
            .map(|d| d.fixed_delay),
        abort: fault
            .abort
            .as_ref()
            .filter(|a| fires(a.percentage, abort_draw))
            .and_then(|a| match (&a.grpc_status, a.http_status) {
                (Some(name), _) => grpc_code(name).map(Abort::Grpc),
                (None, Some(status)) => Some(Abort::Http(status)),
                (None, None) => None,
            }),
    }
}

/// Decide with fresh random draws.
pub fn decide_random(fault: &Fault) -> FaultAction {
    decide(
        fault,
        rand::random_range(0.0..100.0),
        rand::random_range(0.0..100.0),
    )
}

/// The numeric gRPC status of a code name (`UNAVAILABLE` -> 14).
pub fn grpc_code(name: &str) -> Option<u32> {
    Some(match name {
        "OK" => 0,
        "CANCELLED" => 1,
        "UNKNOWN" => 2,
        "INVALID_ARGUMENT" => 3,
        "DEADLINE_EXCEEDED" => 4,
        "NOT_FOUND" => 5,
        "ALREADY_EXISTS" => 6,
        "PERMISSION_DENIED" => 7,
        "RESOURCE_EXHAUSTED" => 8,
        "FAILED_PRECONDITION" => 9,
        "ABORTED" => 10,
        "OUT_OF_RANGE" => 11,
        "UNIMPLEMENTED" => 12,
        "INTERNAL" => 13,
        "UNAVAILABLE" => 14,
        "DATA_LOSS" => 15,
        "UNAUTHENTICATED" => 16,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{FaultAbort, FaultDelay};

    fn fault(delay_pct: Option<f64>, abort_pct: Option<f64>) -> Fault {
        Fault {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_secs(7),
                percentage: delay_pct,
            }),
            abort: Some(FaultAbort {
                http_status: Some(418),
                grpc_status: None,
                percentage: abort_pct,
            }),
        }
    }

    #[test]
    fn no_percentage_never_fires() {
        let a = decide(&fault(None, None), 0.0, 0.0);
        assert_eq!(a, FaultAction::default());
    }

    #[test]
    fn draws_are_independent_and_compared_to_the_percentage() {
        let f = fault(Some(50.0), Some(50.0));
        assert_eq!(
            decide(&f, 10.0, 90.0),
            FaultAction {
                delay: Some(Duration::from_secs(7)),
                abort: None
            }
        );
        assert_eq!(
            decide(&f, 90.0, 10.0),
            FaultAction {
                delay: None,
                abort: Some(Abort::Http(418))
            }
        );
        let always = fault(Some(100.0), Some(100.0));
        let a = decide(&always, 99.999, 99.999);
        assert!(a.delay.is_some() && a.abort.is_some());
        let never = fault(Some(0.0), Some(0.0));
        assert_eq!(decide(&never, 0.0, 0.0), FaultAction::default());
    }

    #[test]
    fn grpc_status_names_map_to_codes() {
        let f = Fault {
            delay: None,
            abort: Some(FaultAbort {
                http_status: None,
                grpc_status: Some("UNAVAILABLE".into()),
                percentage: Some(100.0),
            }),
        };
        assert_eq!(decide(&f, 0.0, 0.0).abort, Some(Abort::Grpc(14)));
        assert_eq!(grpc_code("NOT_A_CODE"), None);
    }
}
