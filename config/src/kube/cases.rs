//! The table of Service variants and the one reading each must get, for
//! the shared reader's own test and for the edge's and the node agent's
//! tests, which hold their programs to the same answers.
//!
//! Built with the `testing` feature (and in this crate's tests); not part
//! of the product.

use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::{Protocol, ServiceKey, SessionAffinity, SourceRanges, TrafficPolicy};

/// What a program makes of one Service, in terms both programs share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// Each port's protocol, port and NodePort.
    pub ports: Vec<(Protocol, u16, Option<u16>)>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// Affinity and its timeout.
    pub session_affinity: SessionAffinity,
    /// The source ranges; for `Invalid`, only the variant counts.
    pub source_ranges: SourceRanges,
}

/// The one answer for a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The Service is read as this.
    Read(Outcome),
    /// The Service is refused, naming this field.
    Refused {
        /// The field's path.
        field: &'static str,
    },
}

/// One Service variant.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case is about.
    pub name: &'static str,
    /// The object, as JSON.
    pub object: Value,
    /// The answer.
    pub expect: Expect,
}

impl Case {
    /// The object as a `v1` Service.
    pub fn service(&self) -> core::Service {
        serde_json::from_value(self.object.clone())
            .unwrap_or_else(|e| panic!("case {}: not a Service: {e}", self.name))
    }
}

/// A LoadBalancer Service of the edge's default class with one TCP port
/// (80 -> NodePort 30080), `spec` fields and annotations merged in.
fn lb(spec: Value, annotations: Value) -> Value {
    let mut base = json!({
        "type": "LoadBalancer",
        "loadBalancerClass": "portico.io/edge",
        "ipFamilies": ["IPv4"],
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}],
    });
    base.as_object_mut()
        .expect("an object")
        .extend(spec.as_object().expect("spec is an object").clone());
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "shop", "name": "web", "annotations": annotations},
        "spec": base,
    })
}

/// The reading of [`lb`] with nothing changed.
fn plain() -> Outcome {
    Outcome {
        key: ServiceKey::new("shop", "web"),
        ports: vec![(Protocol::Tcp, 80, Some(30080))],
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity: SessionAffinity::None,
        source_ranges: SourceRanges::Any,
    }
}

fn ranges(nets: &[&str]) -> SourceRanges {
    SourceRanges::Only(nets.iter().map(|n| n.parse().expect("a CIDR")).collect())
}

fn invalid() -> SourceRanges {
    SourceRanges::Invalid { errors: Vec::new() }
}

fn read(change: impl FnOnce(&mut Outcome)) -> Expect {
    let mut o = plain();
    change(&mut o);
    Expect::Read(o)
}

const LEGACY: &str = crate::names::LEGACY_SOURCE_RANGES_ANNOTATION;

/// Every case.
pub fn service_cases() -> Vec<Case> {
    let none = json!({});
    let case = |name, object, expect| Case {
        name,
        object,
        expect,
    };
    let mut no_namespace = lb(json!({}), json!({}));
    no_namespace["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("namespace");
    vec![
        case("plain", lb(json!({}), none.clone()), read(|_| {})),
        case(
            "no namespace is default",
            no_namespace,
            read(|o| o.key = ServiceKey::new("default", "web")),
        ),
        case(
            "protocols: absent is TCP, UDP and SCTP kept",
            lb(
                json!({"ports": [
                    {"name": "a", "port": 53, "nodePort": 30053},
                    {"name": "b", "protocol": "UDP", "port": 53, "nodePort": 30054},
                    {"name": "c", "protocol": "SCTP", "port": 9, "nodePort": 30009},
                ]}),
                none.clone(),
            ),
            read(|o| {
                o.ports = vec![
                    (Protocol::Tcp, 53, Some(30053)),
                    (Protocol::Udp, 53, Some(30054)),
                    (Protocol::Sctp, 9, Some(30009)),
                ]
            }),
        ),
        case(
            "an unknown protocol refuses the Service",
            lb(
                json!({"ports": [
                    {"name": "a", "port": 80, "nodePort": 30080},
                    {"name": "b", "protocol": "ICMP", "port": 1, "nodePort": 30001},
                ]}),
                none.clone(),
            ),
            Expect::Refused {
                field: "spec.ports[1].protocol",
            },
        ),
        case(
            "port 0 refuses the Service",
            lb(
                json!({"ports": [{"port": 0, "nodePort": 30080}]}),
                none.clone(),
            ),
            Expect::Refused {
                field: "spec.ports[0].port",
            },
        ),
        case(
            "port 70000 refuses the Service",
            lb(
                json!({"ports": [{"port": 70000, "nodePort": 30080}]}),
                none.clone(),
            ),
            Expect::Refused {
                field: "spec.ports[0].port",
            },
        ),
        case(
            "nodePort absent or 0 is none",
            lb(
                json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 0}]}),
                none.clone(),
            ),
            read(|o| o.ports = vec![(Protocol::Tcp, 80, None), (Protocol::Tcp, 81, None)]),
        ),
        case(
            "nodePort 70000 refuses the Service",
            lb(
                json!({"ports": [{"port": 80, "nodePort": 70000}]}),
                none.clone(),
            ),
            Expect::Refused {
                field: "spec.ports[0].nodePort",
            },
        ),
        case(
            "Local with its health check port",
            lb(
                json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}),
                none.clone(),
            ),
            read(|o| {
                o.external_traffic_policy = TrafficPolicy::Local;
                o.health_check_node_port = Some(32000);
            }),
        ),
        case(
            "an unknown traffic policy refuses the Service",
            lb(json!({"externalTrafficPolicy": "Sometimes"}), none.clone()),
            Expect::Refused {
                field: "spec.externalTrafficPolicy",
            },
        ),
        case(
            "an unknown type refuses the Service",
            lb(json!({"type": "Balancer"}), none.clone()),
            Expect::Refused { field: "spec.type" },
        ),
        case(
            "an unknown IP family refuses the Service",
            lb(json!({"ipFamilies": ["IPv5"]}), none.clone()),
            Expect::Refused {
                field: "spec.ipFamilies[0]",
            },
        ),
        case(
            "ClientIP without a timeout is 10800 s",
            lb(json!({"sessionAffinity": "ClientIP"}), none.clone()),
            read(|o| {
                o.session_affinity = SessionAffinity::ClientIp {
                    timeout: Duration::from_secs(10800),
                }
            }),
        ),
        case(
            "ClientIP with 60 s",
            lb(
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
                none.clone(),
            ),
            read(|o| {
                o.session_affinity = SessionAffinity::ClientIp {
                    timeout: Duration::from_secs(60),
                }
            }),
        ),
        case(
            "a ClientIP timeout of 0 refuses the Service",
            lb(
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
                none.clone(),
            ),
            Expect::Refused {
                field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            },
        ),
        case(
            "a ClientIP timeout over a day refuses the Service",
            lb(
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
                none.clone(),
            ),
            Expect::Refused {
                field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            },
        ),
        case(
            "an unknown affinity refuses the Service",
            lb(json!({"sessionAffinity": "Cookie"}), none.clone()),
            Expect::Refused {
                field: "spec.sessionAffinity",
            },
        ),
        case(
            "source ranges, v4 and v6",
            lb(
                json!({"loadBalancerSourceRanges": ["192.0.2.0/24", "2001:db8::/32"]}),
                none.clone(),
            ),
            read(|o| o.source_ranges = ranges(&["192.0.2.0/24", "2001:db8::/32"])),
        ),
        case(
            "source ranges: host bits are cleared",
            lb(
                json!({"loadBalancerSourceRanges": ["10.1.2.3/8"]}),
                none.clone(),
            ),
            read(|o| o.source_ranges = ranges(&["10.0.0.0/8"])),
        ),
        case(
            "source ranges: blank padding is trimmed",
            lb(
                json!({"loadBalancerSourceRanges": [" 192.0.2.0/24\t", "  2001:db8::/32 "]}),
                none.clone(),
            ),
            read(|o| o.source_ranges = ranges(&["192.0.2.0/24", "2001:db8::/32"])),
        ),
        case(
            "source ranges: leading zeros are decimal",
            lb(
                json!({"loadBalancerSourceRanges": ["010.001.002.003/32", "192.168.001.000/024"]}),
                none.clone(),
            ),
            read(|o| o.source_ranges = ranges(&["10.1.2.3/32", "192.168.1.0/24"])),
        ),
        case(
            "source ranges: duplicates are kept once",
            lb(
                json!({"loadBalancerSourceRanges": ["10.0.0.0/8", "10.9.9.9/8", "10.0.0.0/8"]}),
                none.clone(),
            ),
            read(|o| o.source_ranges = ranges(&["10.0.0.0/8"])),
        ),
        case(
            "source ranges: one invalid entry closes the Service",
            lb(
                json!({"loadBalancerSourceRanges": ["192.0.2.0/24", "10.0.0.0/33"]}),
                none.clone(),
            ),
            read(|o| o.source_ranges = invalid()),
        ),
        case(
            "source ranges: a bare address is invalid",
            lb(
                json!({"loadBalancerSourceRanges": ["192.0.2.1"]}),
                none.clone(),
            ),
            read(|o| o.source_ranges = invalid()),
        ),
        case(
            "source ranges: the legacy annotation counts when the field is empty",
            lb(json!({}), json!({LEGACY: " 192.0.2.0/24 , 010.0.0.0/8"})),
            read(|o| o.source_ranges = ranges(&["192.0.2.0/24", "10.0.0.0/8"])),
        ),
        case(
            "source ranges: the field wins over the annotation",
            lb(
                json!({"loadBalancerSourceRanges": ["192.0.2.0/24"]}),
                json!({LEGACY: "nonsense"}),
            ),
            read(|o| o.source_ranges = ranges(&["192.0.2.0/24"])),
        ),
        case(
            "source ranges: a blank annotation is no ranges",
            lb(json!({}), json!({LEGACY: "  "})),
            read(|_| {}),
        ),
        case(
            "source ranges: an empty annotation entry is invalid",
            lb(json!({}), json!({LEGACY: "192.0.2.0/24,"})),
            read(|o| o.source_ranges = invalid()),
        ),
        case(
            "a name with capitals refuses the Service",
            renamed(lb(json!({}), none.clone()), "shop", "Web"),
            Expect::Refused {
                field: "metadata.name",
            },
        ),
        case(
            "a name starting with a digit refuses the Service (DNS-1035)",
            renamed(lb(json!({}), none.clone()), "shop", "1web"),
            Expect::Refused {
                field: "metadata.name",
            },
        ),
        case(
            "a name of 64 characters refuses the Service",
            renamed(lb(json!({}), none.clone()), "shop", &"w".repeat(64)),
            Expect::Refused {
                field: "metadata.name",
            },
        ),
        case(
            "a namespace that is no DNS label refuses the Service",
            renamed(lb(json!({}), none.clone()), "shop.eu", "web"),
            Expect::Refused {
                field: "metadata.namespace",
            },
        ),
        case(
            "annotations over 256 KiB in all refuse the Service",
            lb(
                json!({}),
                json!({"example.com/a": "x".repeat(200 * 1024), "example.com/b": "y".repeat(60 * 1024)}),
            ),
            Expect::Refused {
                field: "metadata.annotations",
            },
        ),
    ]
}

/// `object` under another namespace and name.
fn renamed(mut object: Value, namespace: &str, name: &str) -> Value {
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["name"] = json!(name);
    object
}

/// Compares an outcome with a case's answer; `Invalid` source ranges match
/// whatever their errors say.
pub fn check(case: &Case, got: Result<Outcome, String>) {
    match (&case.expect, got) {
        (Expect::Read(want), Ok(mut got)) => {
            if matches!(got.source_ranges, SourceRanges::Invalid { .. }) {
                got.source_ranges = invalid();
            }
            assert_eq!(&got, want, "case {:?}", case.name);
        }
        (Expect::Refused { field }, Err(message)) => assert!(
            message.contains(field),
            "case {:?}: refused, but the reason {message:?} does not name {field}",
            case.name
        ),
        (want, got) => panic!("case {:?}: expected {want:?}, got {got:?}", case.name),
    }
}
