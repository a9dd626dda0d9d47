//! Every Kubernetes name Portico reads or answers with, defined once.

/// The namespace of a namespaced object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The label that hands a Service to an alternative proxy (kube-proxy
/// ignores every Service that carries it).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The legacy annotation holding comma-separated source ranges, read when
/// `spec.loadBalancerSourceRanges` is empty (as kube-proxy and the cloud
/// providers do).
pub const LEGACY_SOURCE_RANGES_ANNOTATION: &str =
    "service.beta.kubernetes.io/load-balancer-source-ranges";

/// The Node label that keeps a node out of load balancers (KEP-3458).
pub const EXCLUDE_FROM_LOAD_BALANCERS_LABEL: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// The cluster autoscaler's taint on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The header of a `healthCheckNodePort` answer carrying the node's number
/// of local endpoints (a load balancer may use it as the node's weight).
pub const ENDPOINT_WEIGHT_HEADER: &str = "X-Load-Balancing-Endpoint-Weight";

/// kube-proxy's node health server port (`/healthz`, `/livez`).
pub const KUBE_PROXY_HEALTH_PORT: u16 = 10256;

/// The most seconds `sessionAffinityConfig.clientIP.timeoutSeconds` may be.
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;
