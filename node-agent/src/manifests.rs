//! Manifest files into the cluster model: [`parse_manifests`] turns one
//! file's text (YAML with any number of `---` documents, or JSON; single
//! objects or `*List` kinds) into [`Object`]s, and [`load_dir`] reads a
//! directory of such files into a [`Snapshot`]. [`fingerprint`] lets a
//! poller notice changes.
//!
//! Each object is read by the shared reader ([`portico_config::kube`]), the
//! same code that reads the objects of the Kubernetes watch, and of the
//! edge, so a manifest means what the same object means in a cluster.
//!
//! Problems never cost more than their own scope: a document that does not
//! parse loses that document, an object the reader refuses loses that
//! object, an unreadable file loses that file. What the reader works around
//! (an unparsable source range closes the Service's load-balancer
//! addresses; an endpoint without a valid address is skipped) is reported
//! and costs nothing else.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::serde::de::DeserializeOwned;
use portico_config::cluster::{ClusterService, EndpointSlice};
use portico_config::kube::{read_endpoint_slice, read_node, read_service, FieldProblem, Read};
use portico_config::names::DEFAULT_NAMESPACE;
use portico_config::{Node, ServiceKey};
use serde_json::Value;
use xxhash_rust::xxh3::Xxh3;

/// Where in the manifests something was found: a file (or other origin),
/// the document in it and, inside a `*List`, the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (as given to [`parse_manifests`]; [`load_dir`] uses the path).
    pub origin: String,
    /// The document in the file, counted from 0, empty documents skipped.
    pub document: usize,
    /// The index in the document's `items` when the document is a list.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.origin, self.document)?;
        if let Some(item) = self.item {
            write!(f, " items[{item}]")?;
        }
        Ok(())
    }
}

/// A problem found while reading manifests. Each loses only its own scope
/// (a file, a document, an object); [`ManifestError::Duplicate`] loses
/// nothing and is a warning.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A manifest file could not be read (vanished, unreadable, not UTF-8).
    /// The file is skipped.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// A document is not valid YAML or JSON. That document is skipped (for
    /// JSON, the rest of the file too: JSON cannot resynchronise).
    #[error("{at}: invalid YAML/JSON: {message}")]
    Syntax {
        /// The file and document.
        at: Location,
        /// The parser's message, with the line in the file.
        message: String,
    },
    /// A document or list item is not a Kubernetes object this module can
    /// read: not a mapping, no `kind`, `items` not a list, or a field of the
    /// wrong type. It is skipped.
    #[error("{at}: {object}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
    Decode {
        /// The file, document and item.
        at: Location,
        /// The object, as far as it could be named (`Service default/web`).
        object: String,
        /// The path of the offending value, empty for the whole object.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An object was decoded but the reader refused it. It is skipped.
    #[error("{at}: {error}")]
    Object {
        /// The file, document and item.
        at: Location,
        /// The refusal, naming the object and field.
        error: FieldProblem,
    },
    /// The reader worked around a problem in an object that is kept (an
    /// unparsable source range, an endpoint without a valid address). Not
    /// an error: the object is used.
    #[error("{at}: {problem}")]
    Problem {
        /// The file, document and item.
        at: Location,
        /// What was worked around.
        problem: FieldProblem,
    },
    /// The same object (kind, namespace and name) is defined twice. Not an
    /// error: the later definition (by file name, then position) is kept.
    #[error("{at}: {object} is also defined at {earlier}; the later definition wins")]
    Duplicate {
        /// The definition that is kept.
        at: Location,
        /// The object (`Service default/web`).
        object: String,
        /// The definition that is dropped.
        earlier: Location,
    },
}

/// One object read from a manifest, converted to the cluster model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A `v1` Service.
    Service(ClusterService),
    /// A `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A `v1` Node.
    Node(Node),
}

impl Object {
    /// Identity for duplicate detection: kind, then `namespace/name`.
    fn identity(&self) -> (&'static str, ServiceKey) {
        match self {
            Object::Service(s) => ("Service", s.key.clone()),
            Object::EndpointSlice(s) => ("EndpointSlice", s.key.clone()),
            Object::Node(n) => ("Node", ServiceKey::new("", n.name.clone())),
        }
    }

    /// The object's name as errors print it.
    fn describe(&self) -> String {
        match self {
            Object::Service(s) => format!("Service {}", s.key),
            Object::EndpointSlice(s) => format!("EndpointSlice {}", s.key),
            Object::Node(n) => format!("Node {}", n.name),
        }
    }
}

/// Everything read from a manifest directory: what the planner needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every Service, sorted by key (one per key).
    pub services: Vec<ClusterService>,
    /// Every EndpointSlice, sorted by key (one per key).
    pub slices: Vec<EndpointSlice>,
    /// The Node named like this agent's node, if a manifest defines it.
    pub node: Option<Node>,
}

// ---------------------------------------------------------------------------
// Manifest text
// ---------------------------------------------------------------------------

/// Parses one manifest file's text into objects.
///
/// The text is JSON (one or more concatenated values) when it starts with
/// `{` or `[` and parses as such, YAML otherwise (any number of documents
/// separated by `---`; JSON objects separated by `---` work too). A document
/// is one object or a list: `ServiceList`, `EndpointSliceList`, `NodeList`
/// (whose items carry no `kind`, as the API returns them; any other
/// `<Kind>List` likewise) or `List` (whose items must carry their `kind`).
/// Kinds other than Service, EndpointSlice and Node are ignored (debug log);
/// empty documents are skipped and not counted. An object's `apiVersion`, when
/// given, must be the one `k8s-openapi` decodes (`v1`, `discovery.k8s.io/v1`).
///
/// Every problem is returned with its place (`origin`, document, list item);
/// a document that does not parse or an object that does not convert is
/// skipped, the rest of the file still loads.
pub fn parse_manifests(text: &str, origin: &str) -> (Vec<Object>, Vec<ManifestError>) {
    let (located, errors) = parse_located(text, origin);
    (located.into_iter().map(|(_, o)| o).collect(), errors)
}

/// [`parse_manifests`], keeping each object's place.
fn parse_located(text: &str, origin: &str) -> (Vec<(Location, Object)>, Vec<ManifestError>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let documents = match json_documents(text, origin) {
        Some(docs) if docs.iter().all(Result::is_ok) => docs,
        // JSON objects separated by `---` are YAML; keep whichever reading
        // loses less.
        Some(docs) => {
            let yaml = yaml_documents(text, origin);
            if yaml.iter().all(Result::is_ok) {
                yaml
            } else {
                docs
            }
        }
        None => yaml_documents(text, origin),
    };
    for (document, parsed) in documents.into_iter().enumerate() {
        let at = Location {
            origin: origin.to_owned(),
            document,
            item: None,
        };
        match parsed {
            Ok(value) => decode_document(value, None, at, &mut out, &mut errors),
            Err(message) => errors.push(ManifestError::Syntax { at, message }),
        }
    }
    (out, errors)
}

/// One non-empty document: its value, or the syntax error message.
type Document = Result<Value, String>;

/// The documents of a JSON text, or `None` when the text is not JSON (does
/// not start with `{`/`[`, or its first value does not parse).
fn json_documents(text: &str, origin: &str) -> Option<Vec<Document>> {
    if !text.trim_start().starts_with(['{', '[']) {
        return None;
    }
    let mut docs = Vec::new();
    for (i, value) in serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
    {
        match value {
            Ok(Value::Null) => {}
            Ok(v) => docs.push(Ok(v)),
            Err(_) if i == 0 => {
                tracing::debug!(origin, "not JSON, reading it as YAML");
                return None;
            }
            Err(e) => {
                docs.push(Err(e.to_string()));
                break;
            }
        }
    }
    Some(docs)
}

/// The non-empty documents of a YAML text. Documents are split at `---` and
/// `...` markers before parsing, so one with a syntax error does not stop
/// the ones after it.
fn yaml_documents(text: &str, origin: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    for (first_line, chunk) in split_yaml(text) {
        match serde_yaml_ng::from_str::<Value>(chunk) {
            Ok(Value::Null) => {}
            Ok(v) => docs.push(Ok(v)),
            Err(e) => {
                // Report lines in the file, not in the chunk.
                let message = shift_lines(&e.to_string(), first_line - 1);
                tracing::debug!(origin, %message, "YAML document does not parse");
                docs.push(Err(message));
            }
        }
    }
    docs
}

/// Adds `offset` to every `line N` in a parser message.
fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(pos) = rest.find("line ") {
        let (head, tail) = rest.split_at(pos + "line ".len());
        out.push_str(head);
        let digits = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match tail[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Splits YAML text into documents: a `---` line starts one (and stays in
/// it: it may carry content), a `...` line ends one. Returns each chunk with
/// its first line number (1-based).
fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    fn is_marker(line: &str, marker: &str) -> bool {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    }

    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        if is_marker(line, "---") {
            chunks.push((start_line, &text[start..offset]));
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
        if is_marker(line, "...") {
            chunks.push((start_line, &text[start..offset]));
            start = offset;
            start_line = line_no + 1;
        }
    }
    chunks.push((start_line, &text[start..]));
    chunks.retain(|(_, chunk)| !chunk.trim().is_empty());
    chunks
}

/// Names an object from its raw form (`Service default/web`), for errors
/// about objects that did not decode.
fn describe_raw(kind: &str, value: &Value) -> String {
    let meta = value.get("metadata");
    let field = |name: &str| {
        meta.and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (field("name"), kind) {
        (None, _) => format!("{kind} (unnamed)"),
        (Some(name), "Node") => format!("Node {name}"),
        (Some(name), _) => format!(
            "{kind} {}/{name}",
            field("namespace").unwrap_or(DEFAULT_NAMESPACE)
        ),
    }
}

/// Decodes a `k8s-openapi` type; a value of the wrong type is reported
/// (with its path) in `errors`.
fn decode<T: DeserializeOwned>(
    value: Value,
    kind: &str,
    at: &Location,
    errors: &mut Vec<ManifestError>,
) -> Option<T> {
    let object = describe_raw(kind, &value);
    match serde_path_to_error::deserialize(value) {
        Ok(decoded) => Some(decoded),
        Err(e) => {
            let path = e.path().to_string();
            errors.push(ManifestError::Decode {
                at: at.clone(),
                object,
                field: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            });
            None
        }
    }
}

/// The object of a reading, its worked-around problems reported at `at`.
fn kept<T>(
    read: Read<T>,
    object: fn(T) -> Object,
    at: &Location,
    errors: &mut Vec<ManifestError>,
) -> Object {
    errors.extend(
        read.problems
            .into_iter()
            .map(|problem| ManifestError::Problem {
                at: at.clone(),
                problem,
            }),
    );
    object(read.value)
}

/// Converts one document or list item; `kind_hint` is the item kind implied
/// by the enclosing `*List`.
fn decode_document(
    value: Value,
    kind_hint: Option<&str>,
    at: Location,
    out: &mut Vec<(Location, Object)>,
    errors: &mut Vec<ManifestError>,
) {
    let decode_error =
        |at: Location, object: String, field: &str, message: &str| ManifestError::Decode {
            at,
            object,
            field: field.into(),
            message: message.into(),
        };
    if !value.is_object() {
        errors.push(decode_error(
            at,
            "document".into(),
            "",
            "expected a Kubernetes object (a mapping)",
        ));
        return;
    }
    let kind = match value.get("kind") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
        None | Some(Value::Null) if kind_hint.is_some() => {
            kind_hint.map(str::to_owned).unwrap_or_default()
        }
        _ => {
            errors.push(decode_error(
                at,
                "object".into(),
                "kind",
                "required: a non-empty string",
            ));
            return;
        }
    };

    let converted = match kind.as_str() {
        "Service" => decode::<core::Service>(value, &kind, &at, errors)
            .map(|s| read_service(&s).map(|r| kept(r, Object::Service, &at, errors))),
        "EndpointSlice" => decode::<discovery::EndpointSlice>(value, &kind, &at, errors)
            .map(|s| read_endpoint_slice(&s).map(|r| kept(r, Object::EndpointSlice, &at, errors))),
        "Node" => decode::<core::Node>(value, &kind, &at, errors)
            .map(|n| read_node(&n).map(|r| kept(r, Object::Node, &at, errors))),
        list if list.ends_with("List") => {
            let item_kind = list.strip_suffix("List").filter(|k| !k.is_empty());
            let items = match value {
                Value::Object(mut map) => map.remove("items"),
                _ => None,
            };
            let items = match items {
                None | Some(Value::Null) => return,
                Some(Value::Array(items)) => items,
                Some(_) => {
                    errors.push(decode_error(at, kind.clone(), "items", "expected a list"));
                    return;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let at = Location {
                    item: Some(i),
                    ..at.clone()
                };
                decode_document(item, item_kind, at, out, errors);
            }
            return;
        }
        other => {
            tracing::debug!(
                origin = %at.origin,
                document = at.document,
                kind = other,
                "ignoring object of unhandled kind"
            );
            return;
        }
    };
    match converted {
        None => {}
        Some(Ok(object)) => out.push((at, object)),
        Some(Err(error)) => errors.push(ManifestError::Object { at, error }),
    }
}

// ---------------------------------------------------------------------------
// Directory
// ---------------------------------------------------------------------------

/// The manifest files of `dir`: `*.yaml`, `*.yml` and `*.json`, not hidden
/// (names starting with `.` are skipped, e.g. editor lock files and the
/// `..data` entries of a ConfigMap mount), not recursive, sorted by name.
/// Symlinks are followed.
fn manifest_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let wanted = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext));
        let path = entry.path();
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every manifest file of `dir` (`*.yaml`, `*.yml`, `*.json`; sorted by
/// name; not recursive; hidden files skipped) into a [`Snapshot`].
///
/// Keeps the Node named `node_name` (other Nodes are ignored). When an
/// object (same kind, namespace and name) is defined more than once, the
/// later one (by file name, then position in the file) wins and a
/// [`ManifestError::Duplicate`] is returned. Nothing is logged here beyond
/// debug messages: the caller reports the returned problems.
///
/// An object that fails to convert is skipped and does not replace an
/// earlier valid definition. Fails only when the directory itself cannot be
/// listed; an unreadable file is a [`ManifestError::Read`]. File names that
/// are not UTF-8 are skipped.
pub fn load_dir(dir: &Path, node_name: &str) -> Result<(Snapshot, Vec<ManifestError>), io::Error> {
    let mut errors = Vec::new();
    let mut objects: BTreeMap<(&'static str, ServiceKey), (Location, Object)> = BTreeMap::new();
    for path in manifest_files(dir)? {
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                errors.push(ManifestError::Read { path, error });
                continue;
            }
        };
        let (located, file_errors) = parse_located(&text, &path.display().to_string());
        errors.extend(file_errors);
        for (at, object) in located {
            if let Object::Node(node) = &object {
                if node.name != node_name {
                    tracing::debug!(node = %node.name, "ignoring another node's Node object");
                    continue;
                }
            }
            match objects.entry(object.identity()) {
                Entry::Vacant(slot) => {
                    slot.insert((at, object));
                }
                Entry::Occupied(mut slot) => {
                    let description = object.describe();
                    let (earlier, _) = slot.insert((at.clone(), object));
                    errors.push(ManifestError::Duplicate {
                        at,
                        object: description,
                        earlier,
                    });
                }
            }
        }
    }

    let mut snapshot = Snapshot::default();
    for (_, object) in objects.into_values() {
        match object {
            Object::Service(s) => snapshot.services.push(s),
            Object::EndpointSlice(s) => snapshot.slices.push(s),
            Object::Node(n) => snapshot.node = Some(n),
        }
    }
    Ok((snapshot, errors))
}

/// A fingerprint of the manifest files of `dir` (the files [`load_dir`]
/// reads): their names, sizes and contents. Poll it and reload when it
/// changes; take it before [`load_dir`], so that a change during the load
/// shows up at the next poll.
///
/// Fails only when the directory cannot be listed; a file that cannot be
/// read counts with its error kind, so it changes the fingerprint as it
/// comes and goes.
pub fn fingerprint(dir: &Path) -> io::Result<u64> {
    let mut hasher = Xxh3::new();
    let files = manifest_files(dir)?;
    hasher.update(&(files.len() as u64).to_le_bytes());
    for path in files {
        let name = path.file_name().unwrap_or_default();
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_encoded_bytes());
        match fs::read(&path) {
            Ok(content) => {
                hasher.update(&[1]);
                hasher.update(&(content.len() as u64).to_le_bytes());
                hasher.update(&content);
            }
            Err(error) => {
                hasher.update(&[0]);
                hasher.update(error.kind().to_string().as_bytes());
            }
        }
    }
    Ok(hasher.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = include_str!("../tests/fixtures/02-get-service.body");
    const NODE_LIST: &str = include_str!("../tests/fixtures/03-list-nodes.body");
    const SLICE_LIST: &str = include_str!("../tests/fixtures/04-list-endpointslices-selector.body");

    /// The recorded `web` Service as the shared reader reads it from the API.
    fn web_fixture() -> ClusterService {
        let k8s: core::Service = serde_json::from_str(SERVICE).expect("fixture");
        read_service(&k8s).expect("reads").value
    }

    /// Parses text that must not produce any problem.
    fn parse_clean(text: &str) -> Vec<Object> {
        let (objects, errors) = parse_manifests(text, "test.yaml");
        assert!(errors.is_empty(), "{errors:?}");
        objects
    }

    #[test]
    fn a_manifest_reads_as_the_same_object_from_the_api() {
        assert_eq!(parse_clean(SERVICE), [Object::Service(web_fixture())]);
    }

    /// The agent's two ways in (a manifest file, the watch's objects) give
    /// each Service variant of the shared table its one answer.
    #[test]
    fn every_shared_case_reads_the_same_through_manifests_and_the_watch() {
        use portico_config::kube::cases::{self, Outcome};

        let outcome = |svc: &ClusterService| Outcome {
            key: svc.key.clone(),
            ports: svc
                .ports
                .iter()
                .map(|p| (p.protocol, p.port, p.node_port))
                .collect(),
            external_traffic_policy: svc.external_traffic_policy,
            health_check_node_port: svc.health_check_node_port,
            session_affinity: svc.session_affinity,
            source_ranges: svc.source_ranges.clone(),
        };
        for case in cases::service_cases() {
            let text = serde_json::to_string(&case.object).expect("JSON");
            let (objects, errors) = parse_manifests(&text, case.name);
            let from_manifest = match &objects[..] {
                [Object::Service(svc)] => Ok(outcome(svc)),
                [] => Err(errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")),
                other => panic!("case {:?}: {other:?}", case.name),
            };
            cases::check(&case, from_manifest);

            let (snapshot, problems) =
                crate::kube_source::snapshot_from_objects([&case.service()], [], [], "n1");
            let from_watch = match &snapshot.services[..] {
                [svc] => Ok(outcome(svc)),
                [] => Err(problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")),
                other => panic!("case {:?}: {other:?}", case.name),
            };
            cases::check(&case, from_watch);
        }
    }

    #[test]
    fn worked_around_problems_are_reported_and_the_object_kept() {
        let text = "
kind: Service
metadata: {name: closed}
spec: {type: LoadBalancer, loadBalancerSourceRanges: [10.0.0.0/33]}
";
        let (objects, errors) = parse_manifests(text, "closed.yaml");
        let [Object::Service(svc)] = &objects[..] else {
            panic!("{objects:?}");
        };
        assert!(matches!(
            svc.source_ranges,
            portico_config::SourceRanges::Invalid { .. }
        ));
        let [ManifestError::Problem { at, problem }] = &errors[..] else {
            panic!("{errors:?}");
        };
        assert_eq!(at.document, 0);
        assert_eq!(problem.field, "spec.loadBalancerSourceRanges");
    }

    #[test]
    fn multi_document_yaml_with_a_broken_document() {
        let text = "\
# leading comment
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {clusterIP: 10.96.0.1}
---
---
apiVersion: v1
kind: Service
metadata: {name: broken
spec: {}
--- # a comment after the marker
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
...
";
        let (objects, errors) = parse_manifests(text, "multi.yaml");
        let names: Vec<String> = objects.iter().map(Object::describe).collect();
        assert_eq!(names, ["Service default/a", "Node n1"]);
        let [ManifestError::Syntax { at, message }] = &errors[..] else {
            panic!("expected one syntax error, got {errors:?}");
        };
        assert_eq!(
            *at,
            Location {
                origin: "multi.yaml".into(),
                document: 1,
                item: None
            }
        );
        // The line is the one in the file, not in the document.
        assert!(
            message.contains("at line 12 column 5")
                && message.contains("flow mapping at line 11 column 11"),
            "{message}"
        );
        assert!(
            errors[0]
                .to_string()
                .starts_with("multi.yaml document 1: invalid YAML/JSON: "),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn undecodable_and_unconvertible_objects_are_skipped_alone() {
        let text = "\
kind: Service
metadata: {name: typed, namespace: ns}
spec: {ports: [{port: eighty}]}
---
kind: Service
metadata: {name: ranged}
spec: {ports: [{port: 80, nodePort: 99999}]}
---
kind: Service
apiVersion: v2
metadata: {name: version}
---
- just
- a list
---
metadata: {name: kindless}
---
kind: Service
metadata: {name: fine}
spec: {}
";
        let (objects, errors) = parse_manifests(text, "f.yaml");
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].describe(), "Service default/fine");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert!(
            messages[0].starts_with(
                "f.yaml document 0: Service ns/typed: spec.ports[0].port: invalid type"
            ),
            "{}",
            messages[0]
        );
        assert_eq!(
            messages[1],
            "f.yaml document 1: Service default/ranged: spec.ports[0].nodePort: 99999 is outside 1-65535"
        );
        assert!(
            messages[2].starts_with(
                r#"f.yaml document 2: Service default/version: invalid value: string "v2", expected v1"#
            ),
            "{}",
            messages[2]
        );
        assert_eq!(
            messages[3],
            "f.yaml document 3: document: expected a Kubernetes object (a mapping)"
        );
        assert_eq!(
            messages[4],
            "f.yaml document 4: object: kind: required: a non-empty string"
        );
        let ManifestError::Object { at, error } = &errors[1] else {
            panic!("expected an object error, got {:?}", errors[1]);
        };
        assert_eq!(at.document, 1);
        assert_eq!(error.field, "spec.ports[0].nodePort");
    }

    #[test]
    fn plain_list_and_list_without_item_kind() {
        let text = "
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: a}
    spec: {}
  - metadata: {name: no-kind}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}
    addressType: IPv4
  - kind: Secret
    metadata: {name: ignored}
---
kind: NodeList
items: [{metadata: {name: n1}}]
---
kind: PodList
items: [{metadata: {name: p}}]
---
kind: ServiceList
items: null
";
        let (objects, errors) = parse_manifests(text, "list.yaml");
        let names: Vec<String> = objects.iter().map(Object::describe).collect();
        assert_eq!(
            names,
            ["Service default/a", "EndpointSlice default/a-1", "Node n1"]
        );
        let [ManifestError::Decode { at, field, .. }] = &errors[..] else {
            panic!("expected one decode error, got {errors:?}");
        };
        assert_eq!((at.document, at.item, field.as_str()), (0, Some(1), "kind"));
        assert!(errors[0]
            .to_string()
            .starts_with("list.yaml document 0 items[1]: "));
    }

    #[test]
    fn json_streams() {
        let objects = parse_clean(&format!("{SERVICE}\n{NODE_LIST}"));
        assert_eq!(objects.len(), 2);

        // A broken second value: the first one still loads.
        let (objects, errors) = parse_manifests(&format!("{SERVICE}\n{{\"kind\": "), "x.json");
        assert_eq!(objects, [Object::Service(web_fixture())]);
        let [ManifestError::Syntax { at, .. }] = &errors[..] else {
            panic!("expected one syntax error, got {errors:?}");
        };
        assert_eq!(at.document, 1);

        // JSON documents separated by `---` (YAML).
        let objects = parse_clean(&format!("{SERVICE}\n---\n{NODE_LIST}\n---\n{SLICE_LIST}"));
        assert_eq!(objects.len(), 3);

        // Flow-style YAML that is not JSON.
        let objects = parse_clean("{kind: Node, metadata: {name: n1}}");
        assert_eq!(objects.len(), 1);

        // Empty input has no objects and no errors.
        assert!(parse_clean("").is_empty());
        assert!(parse_clean("# nothing\n---\n").is_empty());
    }

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).expect("write test file");
    }

    #[test]
    fn load_dir_later_file_wins_and_keeps_own_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(
            d,
            "10-services.yaml",
            "
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.1}
---
kind: Node
metadata: {name: me}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
kind: Node
metadata: {name: other}
",
        );
        write(d, "20-override.json", SERVICE);
        write(d, "30-slices.yml", SLICE_LIST);
        write(d, "40-broken.yaml", "kind: Service\nmetadata: {name: [\n");
        write(d, "notes.txt", "kind: Node\nmetadata: {name: me}\n");
        write(d, ".hidden.yaml", "kind: Node\nmetadata: {name: me}\n");
        fs::create_dir(d.join("sub.yaml")).expect("mkdir");
        write(
            &d.join("sub.yaml"),
            "x.yaml",
            "kind: Node\nmetadata: {name: me}\n",
        );

        let (snapshot, errors) = load_dir(d, "me").expect("load");
        assert_eq!(snapshot.services, [web_fixture()]);
        assert_eq!(snapshot.slices.len(), 1);
        assert_eq!(
            snapshot.slices[0].key,
            ServiceKey::new("default", "web-abc12")
        );
        assert_eq!(
            snapshot.node,
            Some(Node {
                name: "me".into(),
                addresses: vec!["10.0.0.1".parse().expect("ip")],
                excluded: vec![],
            })
        );

        assert_eq!(errors.len(), 2, "{errors:?}");
        let ManifestError::Duplicate {
            at,
            object,
            earlier,
        } = &errors[0]
        else {
            panic!("expected a duplicate warning, got {errors:?}");
        };
        assert_eq!(object, "Service default/web");
        assert!(at.origin.ends_with("20-override.json"), "{at}");
        assert!(earlier.origin.ends_with("10-services.yaml"), "{earlier}");
        assert_eq!(earlier.document, 0);
        assert!(
            matches!(&errors[1], ManifestError::Syntax { at, .. } if at.origin.ends_with("40-broken.yaml")),
            "{errors:?}"
        );

        // Another node name: no Node.
        let (snapshot, _) = load_dir(d, "nobody").expect("load");
        assert_eq!(snapshot.node, None);

        // Only the listing itself is fatal.
        assert!(load_dir(&d.join("missing"), "me").is_err());
        assert!(fingerprint(&d.join("missing")).is_err());
    }

    #[test]
    fn fingerprint_follows_manifest_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let empty = fingerprint(d).expect("fingerprint");
        write(d, "a.yaml", "kind: Node\nmetadata: {name: n1}\n");
        let one = fingerprint(d).expect("fingerprint");
        assert_ne!(one, empty);
        assert_eq!(fingerprint(d).expect("fingerprint"), one, "stable");

        // Same size, different content.
        write(d, "a.yaml", "kind: Node\nmetadata: {name: n2}\n");
        let changed = fingerprint(d).expect("fingerprint");
        assert_ne!(changed, one);

        // Files load_dir ignores do not count.
        write(d, "README.md", "hello");
        write(d, ".a.yaml.swp", "junk");
        assert_eq!(fingerprint(d).expect("fingerprint"), changed);

        // Renaming counts.
        fs::rename(d.join("a.yaml"), d.join("b.yaml")).expect("rename");
        assert_ne!(fingerprint(d).expect("fingerprint"), changed);
    }
}
