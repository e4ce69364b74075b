//! The request path's filters, in Envoy's order: fault -> CORS -> header operations and rewrite ->
//! router (forward with retries, mirrors) -> response headers. Each filter is small and knows
//! nothing of routing.

pub mod fault;
pub mod mirror;
