//! What the store checks and changes beyond defaulting and per-object
//! validation, as the real server's admission and registry do: creates only
//! in a namespace that exists and is not being deleted, a Service's class
//! and NodePorts, and the fields an older server does not know.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{is_service, key_of, res_key, Store};
use crate::resource::{self, ResourceDef};
use crate::status::ApiError;

impl Store {
    /// A client may create a namespaced object only in a namespace that
    /// exists (404 otherwise) and is not being deleted (403). A namespace
    /// exists when it is built in ([`resource::BUILT_IN_NAMESPACES`]), has
    /// a Namespace object, or holds any object (so tests that seed objects
    /// in a namespace need not create it); it is being deleted when its
    /// Namespace object says `status.phase: Terminating` or carries a
    /// `deletionTimestamp`.
    pub(super) fn check_namespace(
        &self,
        res: &ResourceDef,
        name: &str,
        ns: &str,
    ) -> Result<(), ApiError> {
        let namespaces = resource::by_kind("v1", "Namespace").expect("namespaces are served");
        if let Some(n) = self.get(namespaces, None, ns) {
            if n["status"]["phase"] == "Terminating"
                || !n["metadata"]["deletionTimestamp"].is_null()
            {
                return Err(ApiError::namespace_terminating(res, name, ns));
            }
            return Ok(());
        }
        let prefix = format!("{ns}/");
        let holds_objects = self.objects.values().any(|m| {
            m.range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
        });
        if resource::BUILT_IN_NAMESPACES.contains(&ns) || holds_objects {
            Ok(())
        } else {
            Err(ApiError::namespace_not_found(ns))
        }
    }

    /// The checks of a client's Service write that need more than the
    /// object: its class may not change while a LoadBalancer, and its
    /// NodePorts must be free.
    pub(super) fn check_client_write(
        &self,
        res: &ResourceDef,
        name: &str,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if !is_service(res) {
            return Ok(());
        }
        let key = key_of(res, obj);
        let mut causes = old
            .map(|old| crate::service::validate_update(obj, old))
            .unwrap_or_default();
        let others = self
            .objects
            .get(&res_key(res))
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(k, _)| **k != key)
            .map(|(_, v)| v);
        causes.extend(crate::service::node_port_clashes(obj, old, others));
        if causes.is_empty() {
            return Ok(());
        }
        Err(ApiError::Invalid {
            kind: res.kind.into(),
            group: res.group.into(),
            name: name.into(),
            causes,
        })
    }

    /// The NodePorts every Service but the one at `except` holds (none for
    /// other resources).
    pub(super) fn node_ports_taken(
        &self,
        res: &ResourceDef,
        except: Option<&str>,
    ) -> BTreeSet<u64> {
        if !is_service(res) {
            return BTreeSet::new();
        }
        self.objects
            .get(&res_key(res))
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(k, _)| Some(k.as_str()) != except)
            .flat_map(|(_, svc)| crate::service::held_node_ports(&svc["spec"]))
            .collect()
    }

    /// Removes what this server does not know from an object being written.
    pub(super) fn drop_unknown_fields(&self, res: &ResourceDef, obj: &mut Value) {
        if self.drop_ip_mode && res.group.is_empty() && res.kind == "Service" {
            if let Some(ingress) = obj["status"]["loadBalancer"]["ingress"].as_array_mut() {
                for entry in ingress.iter_mut().filter_map(Value::as_object_mut) {
                    entry.remove("ipMode");
                }
            }
        }
    }
}
