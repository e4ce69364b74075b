//! Config errors and warnings: what was wrong, where (file, line, resource, field) and why.
//!
//! Each `Invalid*` enum covers one kind of thing that can be wrong; [`Invalid`] gathers them so a
//! [`ConfigError`] carries a typed reason. The `Display` of a [`ConfigError`] is the line `keel validate`
//! prints: `FILE:LINE: KIND NS/NAME: FIELD: REASON`.

use std::fmt;

use serde::Serialize;

use crate::wire::DurationError;

/// The document itself is unusable (syntax, schema, identity).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidDocument {
    /// YAML syntax error.
    #[error("YAML syntax error: {0}")]
    Syntax(String),
    /// The document is not a mapping with `apiVersion` and `kind`.
    #[error("not a Kubernetes object: {0}")]
    NotAnObject(&'static str),
    /// A known Istio kind under an API version the API server does not serve.
    #[error("{api_version} {kind} is not served (networking.istio.io serves {served})")]
    UnservedVersion {
        /// `apiVersion` as written.
        api_version: String,
        /// `kind` as written.
        kind: String,
        /// The served versions.
        served: &'static str,
    },
    /// Wrong type, unknown field, missing required field (serde's message).
    #[error("{0}")]
    Schema(String),
    /// `metadata.name` missing.
    #[error("metadata.name is required")]
    MissingName,
    /// A second resource with the same kind, namespace and name.
    #[error("duplicate resource (first defined at {first})")]
    Duplicate {
        /// `file:line` of the first definition.
        first: String,
    },
    /// A second `MeshConfig`.
    #[error("only one MeshConfig is allowed (first defined at {first})")]
    SecondMeshConfig {
        /// `file:line` of the first definition.
        first: String,
    },
}

/// A name that must follow Kubernetes naming rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidName {
    /// Not a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters).
    #[error("{0:?} is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)")]
    Dns1123Label(String),
    /// Not a DNS-1123 subdomain.
    #[error("{0:?} is not a valid DNS-1123 subdomain")]
    Dns1123Subdomain(String),
    /// A label key that Kubernetes would reject.
    #[error("invalid label key {0:?}")]
    LabelKey(String),
    /// An annotation key that Kubernetes would reject (checked in lower case).
    #[error("invalid annotation key {0:?}: must be a qualified name ([prefix/]name, name at most 63 characters of [A-Za-z0-9._-] starting and ending with a letter or digit)")]
    AnnotationKey(String),
    /// A label value that Kubernetes would reject.
    #[error("invalid label value {value:?} for key {key:?}")]
    LabelValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Empty where a name is required.
    #[error("must not be empty")]
    Empty,
    /// A pod `metadata.uid` that no API server or kubelet would assign.
    #[error("{0:?} is not a pod UID (a lower-case UUID such as 3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b, or the 32 lower-case hex digits kubelet gives a static pod)")]
    PodUid(String),
}

/// A host name (VirtualService `hosts`, destination `host`, DestinationRule `host`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidHost {
    /// Empty host.
    #[error("host must not be empty")]
    Empty,
    /// `*` somewhere other than as the whole first label.
    #[error("invalid host {0:?}: a wildcard is only allowed as the whole first label (\"*.example.com\")")]
    Wildcard(String),
    /// Bare `*` where it is not allowed.
    #[error("wildcard host \"*\" is not allowed here{0}")]
    Star(&'static str),
    /// A label that is not a DNS-1123 label.
    #[error("invalid host {host:?}: label {label:?} is not a valid DNS label")]
    Label {
        /// The host.
        host: String,
        /// The bad label.
        label: String,
    },
    /// A Gateway server host (`[namespace/]dnsName`) istiod rejects: every problem, joined.
    #[error("invalid host {host:?}: {reason}")]
    Server {
        /// The host as written.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The last label is all-numeric (istiod's `ValidateDNS1123Labels`), e.g. `foo.123` or an IPv4
    /// address where only names are allowed.
    #[error("invalid host {host:?}: the last label {tld:?} must not be all-numeric")]
    NumericTld {
        /// The host.
        host: String,
        /// The last label.
        tld: String,
    },
    /// A gateway-bound host starting `outbound_` that is not `outbound_.<port>_._.<host>`.
    #[error(
        "invalid host {0:?}: an outbound_ host must have the form outbound_.<PORT>_._.<HOSTNAME>"
    )]
    AutoPassthrough(String),
    /// Longer than 255 characters.
    #[error("host {0:?} is longer than 255 characters")]
    TooLong(String),
    /// Listed twice (after short-name expansion).
    #[error("duplicate host {0:?}")]
    Duplicate(String),
    /// Two hosts of one VirtualService overlap (`*.foo.com` and `a.foo.com`).
    #[error("hosts {0:?} and {1:?} overlap")]
    Overlap(String, String),
}

/// A duration field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidDuration {
    /// Not parseable.
    #[error(transparent)]
    Parse(#[from] DurationError),
    /// Below the minimum (Istio: 1ms for most fields).
    #[error("duration {value:?} must be at least {min}")]
    TooShort {
        /// As written.
        value: String,
        /// Human-readable minimum.
        min: &'static str,
    },
    /// Not a whole number of milliseconds.
    #[error("duration {0:?} must be a whole number of milliseconds")]
    SubMillisecond(String),
    /// Not a whole number of seconds (CORS `maxAge`).
    #[error("duration {0:?} must be a whole number of seconds")]
    SubSecond(String),
}

/// A `StringMatch`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidStringMatch {
    /// `null` instead of a match.
    #[error("match must not be null (use {{}} to match any value)")]
    Null,
    /// More than one of exact/prefix/regex.
    #[error("only one of exact, prefix, regex may be set")]
    Several,
    /// `prefix: ""` outside `uri`.
    #[error("empty prefix is only allowed for uri")]
    EmptyPrefix,
    /// `regex: ""`.
    #[error("regex must not be empty")]
    EmptyRegex,
    /// Longer than 1024 characters.
    #[error("regex is {0} characters long (at most 1024 allowed)")]
    RegexTooLong(usize),
    /// Does not compile as RE2.
    #[error("invalid regex {regex:?}: {error}")]
    Regex {
        /// The pattern.
        regex: String,
        /// The compiler's message.
        error: String,
    },
}

/// A route weight.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidWeight {
    /// `weight < 0`.
    #[error("weight {0} must not be negative")]
    Negative(i64),
    /// Larger than int32.
    #[error("weight {0} is too large")]
    TooLarge(i64),
    /// Several destinations whose weights add up to 0.
    #[error(
        "total destination weight = 0 (with several destinations at least one needs a weight > 0)"
    )]
    AllZero,
}

/// A port number or port list.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidPort {
    /// Outside 1..=65535.
    #[error("port number {0} is out of range 1..65535")]
    OutOfRange(i64),
    /// Required but absent.
    #[error("port number is required")]
    Missing,
    /// The same port twice.
    #[error("duplicate port {0}")]
    Duplicate(i64),
    /// The same port name twice.
    #[error("duplicate port name {0:?}")]
    DuplicateName(String),
    /// A name is required (multi-port Services, ServiceEntry ports).
    #[error("port name is required{0}")]
    MissingName(&'static str),
    /// Cluster IP + port already taken by another Service.
    #[error("{addr} is already the address of {other}")]
    VipConflict {
        /// `ip:port`.
        addr: String,
        /// The other service.
        other: String,
    },
}

/// A header name, value or operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidHeader {
    /// Not an HTTP token (RFC 9110 `tchar`s).
    #[error("invalid header name {0:?}")]
    Name(String),
    /// Control characters or a lone `%`.
    #[error("invalid header value {value:?} for {name:?}: {reason}")]
    Value {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `%` operator Envoy would reject (unknown or malformed).
    #[error("header {name:?}: {reason}")]
    Template {
        /// Header name.
        name: String,
        /// What is wrong with the template.
        reason: String,
    },
    /// A pseudo-header (`:path`) or `host` where it cannot be used.
    #[error("header {0:?} cannot be used here")]
    Reserved(String),
    /// Authority rewritten in more than one place.
    #[error("authority is rewritten in more than one place (rewrite.authority, headers set/add :authority or host)")]
    AuthorityTwice,
    /// JWT-claim based routing outside gateways.
    #[error(
        "header {0:?}: JWT claim routing (@request.auth.claims) is only supported on gateways"
    )]
    JwtClaim(String),
}

/// An `HTTPRoute` and its parts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidHttpRoute {
    /// Mutually exclusive fields set together.
    #[error("{0} and {1} cannot be set together")]
    Conflict(&'static str, &'static str),
    /// No route, redirect, direct response or delegate.
    #[error("HTTP route, redirect, direct_response or delegate is required")]
    NoAction,
    /// A required field is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A percentage outside its range.
    #[error("percentage {value} must be in {range}")]
    Percentage {
        /// The value.
        value: f64,
        /// The allowed range.
        range: &'static str,
    },
    /// A status code outside its range.
    #[error("status {value} must be in {range}")]
    Status {
        /// The value.
        value: i64,
        /// The allowed range.
        range: &'static str,
    },
    /// A bad field value.
    #[error("{0}")]
    Value(String),
    /// A field only valid on delegates / roots.
    #[error("{0}")]
    Delegate(&'static str),
    /// An unknown retry condition.
    #[error("unknown retryOn condition {0:?}")]
    RetryOn(String),
    /// An unknown gRPC status name.
    #[error("unknown gRPC status {0:?} (use a name like UNAVAILABLE)")]
    GrpcStatus(String),
}

/// A TCP or TLS route.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidL4Route {
    /// `route` is empty.
    #[error("route is required")]
    NoRoute,
    /// TLS route without `match`.
    #[error("TLS route must have at least one match")]
    NoMatch,
    /// TLS match without `sniHosts`.
    #[error("sniHosts is required")]
    NoSni,
    /// An SNI host not covered by the VirtualService hosts.
    #[error("SNI host {0:?} is not a subset of any of the virtual service's hosts")]
    SniNotInHosts(String),
    /// A bad subnet.
    #[error("{0:?} is not an IP address or CIDR")]
    Subnet(String),
}

/// A DestinationRule traffic policy or subset.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidTrafficPolicy {
    /// An empty block where at least one field is needed.
    #[error("{0} must set at least one field")]
    Empty(&'static str),
    /// Mutually exclusive fields.
    #[error("{0} and {1} cannot be set together")]
    Conflict(&'static str, &'static str),
    /// A required field is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A number out of range.
    #[error("{field} {value} must be in {range}")]
    Range {
        /// Field name.
        field: &'static str,
        /// The value.
        value: f64,
        /// The allowed range.
        range: &'static str,
    },
    /// A bad value.
    #[error("{0}")]
    Value(String),
    /// A subset defined twice in one DestinationRule.
    #[error("duplicate subset {0:?}")]
    DuplicateSubset(String),
    /// A `tls` file (certificate, key, CA bundle, CRL) that cannot be read or parsed.
    #[error("{field} {path}: {reason}")]
    TlsFile {
        /// The field naming the file (`caCertificates`, ...).
        field: &'static str,
        /// The path as resolved.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `exportTo`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidExportTo {
    /// `*` together with other entries.
    #[error("\"*\" cannot be combined with other exportTo entries")]
    StarWithOthers,
    /// `~` where not allowed, or with others.
    #[error("\"~\" (visible to nobody) is {0}")]
    Tilde(&'static str),
    /// An entry twice (`.` and the own namespace count as the same).
    #[error("duplicate exportTo entry {0:?}")]
    Duplicate(String),
    /// Not a namespace name.
    #[error("exportTo entry {0:?} is not \"*\", \".\" or a namespace name")]
    Namespace(String),
    /// A DestinationRule with a workloadSelector exported elsewhere.
    #[error("a DestinationRule with a workloadSelector can only be exported to its own namespace")]
    WorkloadSelector,
}

/// An IP address or CIDR.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidAddress {
    /// Not an IP.
    #[error("{0:?} is not an IP address")]
    Ip(String),
    /// Not an IP or CIDR.
    #[error("{0:?} is not an IP address or CIDR")]
    Cidr(String),
}

/// Every reason a resource (or part of it) can be rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    /// See [`InvalidDocument`].
    #[error(transparent)]
    Document(#[from] InvalidDocument),
    /// See [`InvalidName`].
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// See [`InvalidHost`].
    #[error(transparent)]
    Host(#[from] InvalidHost),
    /// See [`InvalidDuration`].
    #[error(transparent)]
    Duration(#[from] InvalidDuration),
    /// See [`InvalidStringMatch`].
    #[error(transparent)]
    StringMatch(#[from] InvalidStringMatch),
    /// See [`InvalidWeight`].
    #[error(transparent)]
    Weight(#[from] InvalidWeight),
    /// See [`InvalidPort`].
    #[error(transparent)]
    Port(#[from] InvalidPort),
    /// See [`InvalidHeader`].
    #[error(transparent)]
    Header(#[from] InvalidHeader),
    /// See [`InvalidHttpRoute`].
    #[error(transparent)]
    HttpRoute(#[from] InvalidHttpRoute),
    /// See [`InvalidL4Route`].
    #[error(transparent)]
    L4Route(#[from] InvalidL4Route),
    /// See [`InvalidTrafficPolicy`].
    #[error(transparent)]
    TrafficPolicy(#[from] InvalidTrafficPolicy),
    /// See [`InvalidExportTo`].
    #[error(transparent)]
    ExportTo(#[from] InvalidExportTo),
    /// See [`InvalidAddress`].
    #[error(transparent)]
    Address(#[from] InvalidAddress),
    /// An enum field with a value outside its set.
    #[error("unknown value {value:?} (expected one of {allowed})")]
    Enum {
        /// As written.
        value: String,
        /// The accepted values, comma-separated.
        allowed: &'static str,
    },
    /// Valid Istio, but Keel cannot honour it (rejected rather than silently ignored).
    #[error("not supported by Keel: {0}")]
    Unsupported(String),
    /// Anything else specific to one resource kind.
    #[error("{0}")]
    Other(String),
}

impl Invalid {
    /// A stable, machine-readable name of the reason's kind (for `--format json`).
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::Document(_) => "InvalidDocument",
            Invalid::Name(_) => "InvalidName",
            Invalid::Host(_) => "InvalidHost",
            Invalid::Duration(_) => "InvalidDuration",
            Invalid::StringMatch(_) => "InvalidStringMatch",
            Invalid::Weight(_) => "InvalidWeight",
            Invalid::Port(_) => "InvalidPort",
            Invalid::Header(_) => "InvalidHeader",
            Invalid::HttpRoute(_) => "InvalidHttpRoute",
            Invalid::L4Route(_) => "InvalidL4Route",
            Invalid::TrafficPolicy(_) => "InvalidTrafficPolicy",
            Invalid::ExportTo(_) => "InvalidExportTo",
            Invalid::Address(_) => "InvalidAddress",
            Invalid::Enum { .. } => "InvalidEnum",
            Invalid::Unsupported(_) => "Unsupported",
            Invalid::Other(_) => "Invalid",
        }
    }
}

/// Identifies a resource in messages: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// File the resource was read from.
    pub file: String,
    /// 1-based line (of the field when known, else of the document).
    pub line: usize,
    /// `kind` as written, e.g. `VirtualService`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name (`?` when the document has none).
    pub name: String,
    /// Field path inside the document (empty = the whole document).
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: an object without a file (the API server's).
        if self.line == 0 {
            write!(f, "{}: {} ", self.file, self.kind)?;
        } else {
            write!(f, "{}:{}: {} ", self.file, self.line, self.kind)?;
        }
        // Cluster-scoped kinds (Namespace, MeshConfig) have no namespace.
        if self.namespace.is_empty() {
            f.write_str(&self.name)?;
        } else {
            write!(f, "{}/{}", self.namespace, self.name)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        Ok(())
    }
}

/// One rejected resource (or part), printed as `FILE:LINE: KIND NS/NAME: FIELD: REASON`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct ConfigError {
    /// Where.
    pub at: Location,
    /// Why.
    pub reason: Invalid,
}

impl Serialize for ConfigError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ConfigError", 8)?;
        st.serialize_field("file", &self.at.file)?;
        st.serialize_field("line", &self.at.line)?;
        st.serialize_field("kind", &self.at.kind)?;
        st.serialize_field("namespace", &self.at.namespace)?;
        st.serialize_field("name", &self.at.name)?;
        st.serialize_field("field", &self.at.field)?;
        st.serialize_field("code", self.reason.code())?;
        st.serialize_field("reason", &self.reason.to_string())?;
        st.end()
    }
}

/// Something suspicious that does not stop the resource from loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigWarning {
    /// Where.
    #[serde(flatten)]
    pub at: Location,
    /// What to look at.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.at, self.message)
    }
}
