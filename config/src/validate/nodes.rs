//! `nodes:`: each node's name (required, unique), addresses and exclusion
//! reasons.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::checks::spelled;
use super::Validator;
use crate::file::RawNode;
use crate::kube::quoted;
use crate::model::Node;

impl Validator {
    /// `nodes:`, in file order.
    pub(super) fn nodes(&mut self, raw: &[Option<RawNode>]) -> Vec<Node> {
        let mut first_by_name: HashMap<&str, usize> = HashMap::new();
        let mut nodes = Vec::new();
        for (i, node) in raw.iter().enumerate() {
            let Some(node) = node else { continue };
            let path = format!("nodes[{i}]");

            match node.name.as_deref() {
                None => self.error(format!("{path}.name"), "required"),
                Some(name) if name.trim().is_empty() => {
                    self.error(format!("{path}.name"), "must not be empty")
                }
                Some(name) => match first_by_name.entry(name) {
                    Entry::Occupied(earlier) => {
                        let earlier = *earlier.get();
                        self.error(
                            format!("{path}.name"),
                            format!(
                                "duplicate node name {} (already defined at nodes[{earlier}])",
                                quoted(name)
                            ),
                        );
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                },
            }

            let addresses = self.addresses(
                &format!("{path}.addresses"),
                node.addresses.as_deref(),
                "address",
            );

            let mut excluded = Vec::new();
            for (k, reason) in node.excluded.iter().flatten().enumerate() {
                if let Some(reason) = self.check(&format!("{path}.excluded[{k}]"), spelled(reason))
                {
                    if !excluded.contains(&reason) {
                        excluded.push(reason);
                    }
                }
            }

            nodes.push(Node {
                name: node.name.clone().unwrap_or_default(),
                addresses,
                excluded,
            });
        }
        nodes
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::super::test_support::{assert_problems, valid};
    use crate::model::{ExclusionReason, Node};

    #[test]
    fn nodes_are_read_in_order() {
        let config = valid(
            "nodes:\n  - {name: a, addresses: [10.0.0.1, 'fd00::1']}\n  - {name: b, addresses: ['fd00::2'], excluded: [deleting, ToBeDeletedByClusterAutoscaler, deleting]}\n",
        );
        assert_eq!(
            config.nodes,
            vec![
                Node {
                    name: "a".into(),
                    addresses: vec![
                        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                        "fd00::1".parse().unwrap()
                    ],
                    excluded: vec![],
                },
                Node {
                    name: "b".into(),
                    addresses: vec!["fd00::2".parse().unwrap()],
                    excluded: vec![ExclusionReason::Deleting, ExclusionReason::ToBeDeletedTaint],
                },
            ]
        );
    }

    #[test]
    fn node_names_are_required_and_unique() {
        assert_problems(
            "nodes:
  - {name: a, addresses: [10.0.0.1]}
  - {addresses: [10.0.0.2]}
  - {name: '', addresses: [10.0.0.3]}
  - {name: a, addresses: [10.0.0.4]}
  - {name: a, addresses: [10.0.0.5]}
",
            &[
                ("nodes[1].name", "required"),
                ("nodes[2].name", "must not be empty"),
                (
                    "nodes[3].name",
                    r#"duplicate node name "a" (already defined at nodes[0])"#,
                ),
                ("nodes[4].name", "(already defined at nodes[0])"),
            ],
        );
    }

    #[test]
    fn node_exclusion_reasons_use_their_display_spelling() {
        let config = valid(
            "nodes: [{name: a, addresses: [10.0.0.1], excluded: [exclude-from-external-load-balancers]}]",
        );
        assert_eq!(config.nodes[0].excluded, [ExclusionReason::ExcludeLabel]);
        assert!(!config.nodes[0].eligible());
        assert_problems(
            "nodes: [{name: a, addresses: [10.0.0.1], excluded: [deleting, cordoned]}]",
            &[(
                "nodes[0].excluded[1]",
                r#"unknown exclusion reason "cordoned" (expected deleting, exclude-from-external-load-balancers or ToBeDeletedByClusterAutoscaler)"#,
            )],
        );
    }
}
