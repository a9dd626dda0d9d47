//! The object store: what etcd plus the watch cache are to a real API server.
//!
//! One global revision counter is bumped by every write of any resource and
//! stamped into `metadata.resourceVersion`. Every write is also appended to a
//! bounded history of [`Change`]s from which watches are served; the oldest
//! revision still servable is the *horizon* ([`Store::horizon`]), and
//! [`Store::compact`] moves it to the current revision. The store has no IO
//! and no clock of its own beyond [`now_rfc3339`]; the HTTP layer and the
//! control API both go through it.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::managed::{self, Writer};
use crate::patch::{self, PatchKind};
use crate::resource::{self, fill_zero, Allocator, ResourceDef};
use crate::status::ApiError;

mod admission;

/// How many changes the history keeps before the horizon moves on by itself.
pub const DEFAULT_HISTORY: usize = 10_000;

/// What a [`Change`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The object was created.
    Added,
    /// The object was updated.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// One write, as the watch cache remembers it.
#[derive(Debug, Clone)]
pub struct Change {
    /// Revision of the write.
    pub revision: u64,
    /// Resource written.
    pub resource: &'static ResourceDef,
    /// Create, update or delete.
    pub kind: ChangeKind,
    /// The object after the write (for a delete: its last state, at `revision`).
    pub object: Value,
    /// The object before the write (`None` for a create).
    pub previous: Option<Value>,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// The main resource: everything but `.status` (for resources with a status subresource).
    Main,
    /// `/status`: only `.status`.
    Status,
}

/// Who is writing, for `managedFields` (control-API writes have none).
#[derive(Debug, Clone)]
pub struct Manager {
    /// Field manager name (the `fieldManager` parameter or the User-Agent's program name).
    pub name: String,
    /// Whether this is `force=true` on a server-side apply.
    pub force: bool,
}

/// The objects, the revision counter and the change history.
#[derive(Debug, Clone)]
pub struct Store {
    revision: u64,
    horizon: u64,
    max_history: usize,
    objects: BTreeMap<(&'static str, &'static str), BTreeMap<String, Value>>,
    history: VecDeque<Change>,
    alloc: Allocator,
    drop_ip_mode: bool,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

fn res_key(res: &ResourceDef) -> (&'static str, &'static str) {
    (res.group, res.plural)
}

/// The storage key of an object: `namespace/name`, or `name` when cluster-scoped
/// (so iteration order is etcd key order).
pub fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

impl Store {
    /// An empty store at revision 1 (a fresh etcd is never at 0).
    pub fn new() -> Self {
        Store {
            revision: 1,
            horizon: 1,
            max_history: DEFAULT_HISTORY,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            alloc: Allocator::default(),
            drop_ip_mode: false,
        }
    }

    /// Sets how many changes are kept for watches (at least 1).
    pub fn set_history_limit(&mut self, limit: usize) {
        self.max_history = limit.max(1);
        self.trim();
    }

    /// Whether the store drops `status.loadBalancer.ingress[].ipMode` from
    /// every Service written, as an API server older than 1.29 (which does
    /// not know the field) does, silently.
    pub fn set_drop_ip_mode(&mut self, drop: bool) {
        self.drop_ip_mode = drop;
    }

    /// The current revision (what a list returns as `metadata.resourceVersion`).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Watches and pinned lists need a resourceVersion at or after this.
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// Forgets the history: watches from any older revision now get `410 Expired`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.horizon = self.revision;
    }

    /// One object.
    pub fn get(&self, res: &ResourceDef, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects
            .get(&res_key(res))?
            .get(&object_key(ns_for(res, namespace), name))
    }

    /// All objects of a resource (in every namespace), in key order.
    pub fn list(&self, res: &ResourceDef) -> Vec<&Value> {
        self.objects
            .get(&res_key(res))
            .map(|m| m.values().collect())
            .unwrap_or_default()
    }

    /// One object as a `k8s-openapi` type (`None` if absent or not that type).
    pub fn get_as<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let res = resource::of::<K>()?;
        serde_json::from_value(self.get(res, namespace, name)?.clone()).ok()
    }

    /// All objects of a `k8s-openapi` type.
    pub fn list_as<K: k8s_openapi::Resource + DeserializeOwned>(&self) -> Vec<K> {
        let Some(res) = resource::of::<K>() else {
            return Vec::new();
        };
        self.list(res)
            .into_iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect()
    }

    /// The objects of `res` as they were at `revision` (for lists pinned by a
    /// continue token or `resourceVersionMatch=Exact`), keyed by storage key.
    pub fn snapshot_at(
        &self,
        res: &ResourceDef,
        revision: u64,
    ) -> Result<BTreeMap<String, Value>, u64> {
        if revision < self.horizon {
            return Err(self.horizon);
        }
        let mut objects = self.objects.get(&res_key(res)).cloned().unwrap_or_default();
        for change in self.history.iter().rev() {
            if change.revision <= revision {
                break;
            }
            if res_key(change.resource) != res_key(res) {
                continue;
            }
            let key = key_of(res, &change.object);
            match &change.previous {
                Some(prev) => {
                    objects.insert(key, prev.clone());
                }
                None => {
                    objects.remove(&key);
                }
            }
        }
        Ok(objects)
    }

    /// Changes after `revision`, oldest first, or `Err(horizon)` if some of
    /// them have been compacted away.
    pub fn changes_after(&self, revision: u64) -> Result<impl Iterator<Item = &Change>, u64> {
        if revision < self.horizon {
            return Err(self.horizon);
        }
        let start = self.history.partition_point(|c| c.revision <= revision);
        Ok(self.history.range(start..))
    }

    fn trim(&mut self) {
        while self.history.len() > self.max_history {
            if let Some(old) = self.history.pop_front() {
                self.horizon = old.revision;
            }
        }
    }

    fn push(&mut self, change: Change) {
        self.history.push_back(change);
        self.trim();
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Creates an object (POST semantics: name or generateName, server-set
    /// metadata, defaulting, validation, 409 if it exists). With a manager, a
    /// `managedFields` entry is recorded and `.status` is cleared on resources
    /// that do not accept it on create; without one (control API), the given
    /// `managedFields` and status are kept.
    pub fn create(
        &mut self,
        res: &'static ResourceDef,
        mut obj: Value,
        manager: Option<&Manager>,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest("object must be a JSON object".into()));
        }
        let submitted = obj.clone();
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if res.namespaced {
            if obj["metadata"]["namespace"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                obj["metadata"]["namespace"] = json!("default");
            }
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let namespace = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let name = match obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match obj["metadata"]["generateName"].as_str() {
                Some(prefix) => self.generate_name(res, namespace.as_deref(), prefix),
                None => {
                    return Err(ApiError::Invalid {
                        kind: res.kind.into(),
                        group: res.group.into(),
                        name: String::new(),
                        causes: vec![crate::validate::FieldError {
                            reason: "FieldValueRequired",
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    })
                }
            },
        };
        obj["metadata"]["name"] = json!(name);
        if let (Some(ns), Some(_)) = (&namespace, manager) {
            self.check_namespace(res, &name, ns)?;
        }
        if self.get(res, namespace.as_deref(), &name).is_some() {
            return Err(ApiError::already_exists(res, &name));
        }
        if manager.is_some() && res.has_status && res.kind != "Node" {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        self.alloc.taken = self.node_ports_taken(res, None);
        (res.default)(&mut obj, None, &mut self.alloc);
        fill_zero(&mut obj, &(res.zero)());
        self.drop_unknown_fields(res, &mut obj);
        check(res, &name, &obj)?;
        if manager.is_some() {
            self.check_client_write(res, &name, &obj, None)?;
        }
        let now = now_rfc3339();
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        for k in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            meta.remove(k);
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now));
        if res.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if let Some(m) = manager {
            let writer = Writer {
                manager: &m.name,
                operation: "Update",
                api_version: &res.api_version(),
                subresource: None,
                time: &now,
            };
            let entries = managed::record(&[], &writer, &managed::fieldset(&submitted));
            set_managed(&mut obj, entries);
        }
        let rev = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
        let key = object_key(namespace.as_deref(), &name);
        self.objects
            .entry(res_key(res))
            .or_default()
            .insert(key, obj.clone());
        self.push(Change {
            revision: rev,
            resource: res,
            kind: ChangeKind::Added,
            object: obj.clone(),
            previous: None,
        });
        Ok(obj)
    }

    fn generate_name(&self, res: &ResourceDef, ns: Option<&str>, prefix: &str) -> String {
        const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        loop {
            let mut r = random_u64();
            let suffix: String = (0..5)
                .map(|_| {
                    let c = ALPHANUMS[(r % ALPHANUMS.len() as u64) as usize] as char;
                    r /= ALPHANUMS.len() as u64;
                    c
                })
                .collect();
            let name = format!("{prefix}{suffix}");
            if self.get(res, ns, &name).is_none() {
                return name;
            }
        }
    }

    /// Replaces an object (PUT semantics): a non-empty `metadata.resourceVersion`
    /// must match; on the main resource `.status` is kept from the stored object,
    /// on `/status` only `.status` is taken.
    pub fn replace(
        &mut self,
        res: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        sub: Subresource,
        manager: Option<&Manager>,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(res, namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))?;
        if !obj.is_object() {
            return Err(ApiError::BadRequest("object must be a JSON object".into()));
        }
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !rv.is_empty() && rv != old["metadata"]["resourceVersion"] {
            return Err(ApiError::conflict(res, name));
        }
        let new = merge_subresource(res, &old, obj, sub, manager.is_some());
        let write = manager.map(|m| (m, "Update", None));
        self.finish_update(res, &old, new, sub, write)
    }

    /// Upserts an object from the control API: creates it, or replaces it whole
    /// (status included, no resourceVersion check) keeping its identity.
    pub fn upsert(&mut self, res: &'static ResourceDef, obj: Value) -> Result<Value, ApiError> {
        let mut probe = obj.clone();
        if res.namespaced
            && probe["metadata"]["namespace"]
                .as_str()
                .is_none_or(str::is_empty)
        {
            probe["metadata"]["namespace"] = json!("default");
        }
        let ns = probe["metadata"]["namespace"].as_str().map(str::to_string);
        let name = probe["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match self.get(res, ns.as_deref(), &name).cloned() {
            Some(old) if !name.is_empty() => {
                let mut new = probe;
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                self.finish_update(res, &old, new, Subresource::Main, None)
            }
            _ => self.create(res, probe, None),
        }
    }

    /// Patches an object. `manager` is required for [`PatchKind::Apply`],
    /// which also creates a missing object on the main resource.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        res: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &Value,
        sub: Subresource,
        manager: Option<&Manager>,
    ) -> Result<Value, ApiError> {
        let Some(old) = self.get(res, namespace, name).cloned() else {
            if kind == PatchKind::Apply && sub == Subresource::Main {
                let mut obj = body.clone();
                obj["metadata"]["name"] = json!(name);
                if let Some(ns) = namespace {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                return self.create(res, obj, manager);
            }
            return Err(ApiError::not_found(res, name));
        };
        let patched = patch::apply(kind, &old, body)?;
        if patched["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| rv != old["metadata"]["resourceVersion"])
        {
            return Err(ApiError::conflict(res, name));
        }
        let new = merge_subresource(res, &old, patched, sub, true);
        let write = manager.map(|m| {
            if kind == PatchKind::Apply {
                let mut fields = managed::fieldset(body);
                if sub == Subresource::Status {
                    fields =
                        json!({"f:status": fields.get("f:status").cloned().unwrap_or(json!({}))});
                }
                (m, "Apply", Some(fields))
            } else {
                (m, "Update", None)
            }
        });
        self.finish_update(res, &old, new, sub, write)
    }

    /// Common tail of replace/patch/upsert: defaulting, validation, generation,
    /// no-op detection, managedFields, revision and history.
    fn finish_update(
        &mut self,
        res: &'static ResourceDef,
        old: &Value,
        mut new: Value,
        sub: Subresource,
        write: Option<(&Manager, &str, Option<Value>)>,
    ) -> Result<Value, ApiError> {
        new["apiVersion"] = json!(res.api_version());
        new["kind"] = json!(res.kind);
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if write.is_some() || new["metadata"].get("managedFields").is_none() {
            match old["metadata"].get("managedFields") {
                Some(v) => new["metadata"]["managedFields"] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove("managedFields");
                    }
                }
            }
        }
        let client_main_write = write.is_some() && sub == Subresource::Main && is_service(res);
        if client_main_write {
            crate::service::drop_type_dependent_fields(&mut new, old);
        }
        self.alloc.taken = self.node_ports_taken(res, Some(&key_of(res, old)));
        (res.default)(&mut new, Some(old), &mut self.alloc);
        fill_zero(&mut new, &(res.zero)());
        self.drop_unknown_fields(res, &mut new);
        let name = old["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        check(res, &name, &new)?;
        if client_main_write {
            self.check_client_write(res, &name, &new, Some(old))?;
        }
        if new == *old {
            return Ok(old.clone());
        }
        if res.generation && without_meta_status(&new) != without_meta_status(old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if let Some((m, operation, apply_fields)) = write {
            let now = now_rfc3339();
            let fields = apply_fields.unwrap_or_else(|| managed::changed(old, &new));
            let writer = Writer {
                manager: &m.name,
                operation,
                api_version: &res.api_version(),
                subresource: (sub == Subresource::Status).then_some("status"),
                time: &now,
            };
            let current: Vec<Value> = old["metadata"]["managedFields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if operation == "Apply" && !m.force {
                check_apply_conflicts(res, &name, &current, &writer, &fields, old, &new)?;
            }
            let recorded = managed::record(&current, &writer, &fields);
            let gone = managed::removed(old, &new);
            set_managed(&mut new, managed::prune(recorded, &gone));
        }
        let rev = self.bump();
        new["metadata"]["resourceVersion"] = json!(rev.to_string());
        let key = key_of(res, &new);
        self.objects
            .entry(res_key(res))
            .or_default()
            .insert(key, new.clone());
        self.push(Change {
            revision: rev,
            resource: res,
            kind: ChangeKind::Modified,
            object: new.clone(),
            previous: Some(old.clone()),
        });
        Ok(new)
    }

    /// Deletes an object, returning it stamped with the deletion's revision.
    pub fn delete(
        &mut self,
        res: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = object_key(ns_for(res, namespace), name);
        let old = self
            .objects
            .get_mut(&res_key(res))
            .and_then(|m| m.remove(&key))
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let rev = self.bump();
        let mut last = old.clone();
        last["metadata"]["resourceVersion"] = json!(rev.to_string());
        self.push(Change {
            revision: rev,
            resource: res,
            kind: ChangeKind::Deleted,
            object: last.clone(),
            previous: Some(old),
        });
        Ok(last)
    }
}

/// Namespace to use for a lookup: ignored for cluster-scoped resources.
fn ns_for<'a>(res: &ResourceDef, namespace: Option<&'a str>) -> Option<&'a str> {
    if res.namespaced {
        Some(namespace.unwrap_or("default"))
    } else {
        None
    }
}

fn key_of(res: &ResourceDef, obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    object_key(ns_for(res, obj["metadata"]["namespace"].as_str()), name)
}

fn is_service(res: &ResourceDef) -> bool {
    res.group.is_empty() && res.kind == "Service"
}

fn check(res: &ResourceDef, name: &str, obj: &Value) -> Result<(), ApiError> {
    let causes = (res.validate)(obj);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            kind: res.kind.into(),
            group: res.group.into(),
            name: name.into(),
            causes,
        })
    }
}

fn set_managed(obj: &mut Value, entries: Vec<Value>) {
    if entries.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(entries);
    }
}

/// Builds the candidate object of a write: on `/status` the old object with the
/// new status; on the main resource of a resource with a status subresource the
/// new object with the old status (when `keep_status`, i.e. a client write).
fn merge_subresource(
    res: &ResourceDef,
    old: &Value,
    new: Value,
    sub: Subresource,
    keep_status: bool,
) -> Value {
    match sub {
        Subresource::Status => {
            let mut out = old.clone();
            out["status"] = new.get("status").cloned().unwrap_or(json!({}));
            out
        }
        Subresource::Main if res.has_status && keep_status => {
            let mut out = new;
            match old.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    if let Some(o) = out.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            out
        }
        Subresource::Main => new,
    }
}

fn without_meta_status(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

/// A server-side apply without `force` conflicts when it changes the value of
/// a field another manager owns.
fn check_apply_conflicts(
    res: &ResourceDef,
    name: &str,
    entries: &[Value],
    writer: &Writer<'_>,
    fields: &Value,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let changed = managed::changed(old, new);
    let mut conflicts = Vec::new();
    for e in entries {
        if e["manager"] == writer.manager {
            continue;
        }
        let taken = managed::subtract(&changed, &managed::subtract(&changed, &e["fieldsV1"]));
        let mine = managed::subtract(&taken, &managed::subtract(&taken, fields));
        for path in leaf_paths(&mine, String::new()) {
            conflicts.push((
                format!(
                    "conflict with \"{}\"{}",
                    e["manager"].as_str().unwrap_or_default(),
                    if e["operation"] == "Update" {
                        format!(" using {}", e["apiVersion"].as_str().unwrap_or_default())
                    } else {
                        String::new()
                    }
                ),
                path,
            ));
        }
    }
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(ApiError::ApplyConflict {
        resource: res.qualified(),
        group: res.group.into(),
        plural: res.plural.into(),
        name: name.into(),
        conflicts,
    })
}

fn leaf_paths(set: &Value, prefix: String) -> Vec<String> {
    let mut out = Vec::new();
    if let Value::Object(m) = set {
        for (k, v) in m {
            let path = format!("{prefix}.{}", k.trim_start_matches("f:"));
            if v.as_object().is_some_and(|c| c.is_empty()) {
                out.push(path);
            } else {
                out.extend(leaf_paths(v, path));
            }
        }
    }
    out
}

/// A random 64-bit number (std's per-process random hasher keys plus a counter).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A random version-4 UUID string.
pub fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// The current time as RFC 3339 with second precision, like `metav1.Time`.
pub fn now_rfc3339() -> String {
    Timestamp::now().strftime(RFC3339_SECONDS).to_string()
}

/// `metav1.Time`'s format: RFC 3339, whole seconds, UTC.
const RFC3339_SECONDS: &str = "%Y-%m-%dT%H:%M:%SZ";

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: u64) -> String {
    let ts = i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::MAX);
    ts.strftime(RFC3339_SECONDS).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::by_kind;

    fn svc_def() -> &'static ResourceDef {
        by_kind("v1", "Service").unwrap()
    }

    fn mgr(name: &str) -> Manager {
        Manager {
            name: name.into(),
            force: false,
        }
    }

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"ports": [{"port": 80}]}})
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_633_417), "2026-11-25T19:03:37Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn uids_look_like_uuids() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
        assert_ne!(u, new_uid());
    }

    #[test]
    fn one_revision_counter_for_all_resources() {
        let mut s = Store::new();
        let a = s.create(svc_def(), svc("a"), None).unwrap();
        let node = by_kind("v1", "Node").unwrap();
        let n = s
            .create(node, json!({"metadata": {"name": "n1"}}), None)
            .unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        assert_eq!(n["metadata"]["resourceVersion"], "3");
        assert_eq!(s.revision(), 3);
        assert!(n["metadata"].get("namespace").is_none());
        assert_eq!(n["status"]["nodeInfo"]["osImage"], "");
        assert_eq!(s.create(svc_def(), svc("a"), None).unwrap_err().code(), 409);
    }

    #[test]
    fn client_create_clears_service_status_and_records_manager() {
        let mut s = Store::new();
        let mut obj = svc("a");
        obj["status"] = json!({"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}});
        let created = s.create(svc_def(), obj, Some(&mgr("curl"))).unwrap();
        assert_eq!(created["status"], json!({"loadBalancer": {}}));
        assert_eq!(created["metadata"]["managedFields"][0]["manager"], "curl");
        assert!(created["spec"]["clusterIP"].is_string());
    }

    #[test]
    fn status_patch_touches_only_status_and_noop_does_not_bump() {
        let mut s = Store::new();
        let res = svc_def();
        let mut lb = svc("a");
        lb["spec"]["type"] = json!("LoadBalancer");
        s.create(res, lb, None).unwrap();
        let body = json!({"spec": {"type": "NodePort"},
            "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        let out = s
            .patch(
                res,
                Some("default"),
                "a",
                PatchKind::Merge,
                &body,
                Subresource::Status,
                Some(&mgr("x")),
            )
            .unwrap();
        assert_eq!(out["spec"]["type"], "LoadBalancer");
        assert_eq!(out["status"]["loadBalancer"]["ingress"][0]["ip"], "1.2.3.4");
        let rev = s.revision();
        let again = s
            .patch(
                res,
                Some("default"),
                "a",
                PatchKind::Merge,
                &body,
                Subresource::Status,
                Some(&mgr("x")),
            )
            .unwrap();
        assert_eq!(s.revision(), rev);
        assert_eq!(again, out);
        // The main resource ignores status.
        let main = s
            .patch(
                res,
                Some("default"),
                "a",
                PatchKind::Merge,
                &json!({"status": {"loadBalancer": {}}, "metadata": {"labels": {"b": "1"}}}),
                Subresource::Main,
                Some(&mgr("x")),
            )
            .unwrap();
        assert_eq!(main["status"], out["status"]);
        assert_eq!(main["metadata"]["labels"]["b"], "1");
    }

    #[test]
    fn an_older_server_drops_ip_mode_silently() {
        let body = json!({"status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.1", "ipMode": "Proxy"}]}}});
        for drop in [false, true] {
            let mut s = Store::new();
            s.set_drop_ip_mode(drop);
            let res = svc_def();
            s.create(res, svc("a"), None).unwrap();
            let out = s
                .patch(
                    res,
                    Some("default"),
                    "a",
                    PatchKind::Merge,
                    &body,
                    Subresource::Status,
                    Some(&mgr("edge")),
                )
                .unwrap();
            let entry = &out["status"]["loadBalancer"]["ingress"][0];
            assert_eq!(entry["ip"], "203.0.113.1");
            assert_eq!(entry.get("ipMode").is_none(), drop, "{entry}");
        }
    }

    #[test]
    fn the_allocator_skips_node_ports_a_client_chose() {
        let mut s = Store::new();
        let mut chosen = svc("a");
        chosen["spec"]["type"] = json!("NodePort");
        chosen["spec"]["ports"][0]["nodePort"] = json!(30000);
        s.create(svc_def(), chosen.clone(), Some(&mgr("x")))
            .unwrap();
        let mut auto = svc("b");
        auto["spec"]["type"] = json!("NodePort");
        let b = s.create(svc_def(), auto, Some(&mgr("x"))).unwrap();
        assert_eq!(b["spec"]["ports"][0]["nodePort"], 30001);
        chosen["metadata"]["name"] = json!("c");
        let err = s.create(svc_def(), chosen, Some(&mgr("x"))).unwrap_err();
        assert_eq!(err.code(), 422);
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let mut s = Store::new();
        let res = svc_def();
        s.create(res, svc("a"), None).unwrap();
        let body = json!({"metadata": {"resourceVersion": "1"}, "status": {}});
        let err = s
            .patch(
                res,
                Some("default"),
                "a",
                PatchKind::Merge,
                &body,
                Subresource::Status,
                None,
            )
            .unwrap_err();
        assert_eq!(err, ApiError::conflict(res, "a"));
        let mut put = s.get(res, Some("default"), "a").unwrap().clone();
        put["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(
            s.replace(res, Some("default"), "a", put, Subresource::Main, None)
                .unwrap_err()
                .code(),
            409
        );
    }

    #[test]
    fn apply_without_force_conflicts_with_other_owner() {
        let mut s = Store::new();
        let res = svc_def();
        s.create(res, svc("a"), None).unwrap();
        let body = json!({"status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}}});
        s.patch(
            res,
            Some("default"),
            "a",
            PatchKind::Merge,
            &body,
            Subresource::Status,
            Some(&mgr("other")),
        )
        .unwrap();
        let apply = json!({"apiVersion": "v1", "kind": "Service",
            "status": {"loadBalancer": {"ingress": [{"ip": "2.2.2.2"}]}}});
        let err = s
            .patch(
                res,
                Some("default"),
                "a",
                PatchKind::Apply,
                &apply,
                Subresource::Status,
                Some(&mgr("edge")),
            )
            .unwrap_err();
        assert_eq!(err.code(), 409);
        assert!(
            err.to_string().contains(".status.loadBalancer.ingress"),
            "{err}"
        );
        let forced = Manager {
            name: "edge".into(),
            force: true,
        };
        let out = s
            .patch(
                res,
                Some("default"),
                "a",
                PatchKind::Apply,
                &apply,
                Subresource::Status,
                Some(&forced),
            )
            .unwrap();
        assert_eq!(out["metadata"]["managedFields"][0]["manager"], "edge");
        assert_eq!(out["metadata"]["managedFields"][0]["operation"], "Apply");
    }

    #[test]
    fn history_snapshots_and_compaction() {
        let mut s = Store::new();
        let res = svc_def();
        s.create(res, svc("b"), None).unwrap();
        s.create(res, svc("a"), None).unwrap();
        let pinned = s.revision();
        s.delete(res, Some("default"), "b").unwrap();
        s.upsert(res, svc("c")).unwrap();
        let names = |m: &BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&s.snapshot_at(res, pinned).unwrap()),
            ["default/a", "default/b"]
        );
        let kinds: Vec<ChangeKind> = s.changes_after(pinned).unwrap().map(|c| c.kind).collect();
        assert_eq!(kinds, [ChangeKind::Deleted, ChangeKind::Added]);
        s.compact();
        assert_eq!(s.changes_after(pinned).err(), Some(s.revision()));
        assert!(s.snapshot_at(res, pinned).is_err());
        assert_eq!(s.changes_after(s.revision()).unwrap().count(), 0);
    }

    #[test]
    fn bounded_history_moves_the_horizon() {
        let mut s = Store::new();
        s.set_history_limit(2);
        for n in ["a", "b", "c"] {
            s.create(svc_def(), svc(n), None).unwrap();
        }
        assert_eq!(s.horizon(), 2);
        assert!(s.changes_after(1).is_err());
        assert_eq!(s.changes_after(2).unwrap().count(), 2);
    }

    #[test]
    fn generation_counts_spec_changes_only() {
        let mut s = Store::new();
        let es = by_kind("discovery.k8s.io/v1", "EndpointSlice").unwrap();
        let obj = json!({"metadata": {"name": "e", "namespace": "default"}, "addressType": "IPv4",
            "endpoints": [], "ports": [{"port": 80}]});
        let created = s.create(es, obj, None).unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(created["ports"][0]["protocol"], "TCP");
        let relabel = json!({"metadata": {"labels": {"x": "y"}}});
        let out = s
            .patch(
                es,
                Some("default"),
                "e",
                PatchKind::Merge,
                &relabel,
                Subresource::Main,
                None,
            )
            .unwrap();
        assert_eq!(out["metadata"]["generation"], 1);
        let out = s
            .patch(
                es,
                Some("default"),
                "e",
                PatchKind::Merge,
                &json!({"endpoints": [{"addresses": ["10.0.0.1"]}]}),
                Subresource::Main,
                None,
            )
            .unwrap();
        assert_eq!(out["metadata"]["generation"], 2);
    }

    #[test]
    fn generate_name_and_required_name() {
        let mut s = Store::new();
        let ev = by_kind("v1", "Event").unwrap();
        let e = s
            .create(
                ev,
                json!({"metadata": {"generateName": "web."}, "reason": "X"}),
                None,
            )
            .unwrap();
        let name = e["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web.") && name.len() == 9, "{name}");
        assert_eq!(e["firstTimestamp"], Value::Null);
        assert_eq!(e["reportingComponent"], "");
        assert_eq!(
            s.create(ev, json!({"metadata": {}}), None)
                .unwrap_err()
                .code(),
            422
        );
    }

    #[test]
    fn typed_reads() {
        let mut s = Store::new();
        s.create(svc_def(), svc("a"), None).unwrap();
        let typed: k8s_openapi::api::core::v1::Service = s.get_as(Some("default"), "a").unwrap();
        assert_eq!(typed.metadata.name.as_deref(), Some("a"));
        assert_eq!(s.list_as::<k8s_openapi::api::core::v1::Service>().len(), 1);
    }
}
