//! Replays the exchanges recorded from a real kube-apiserver
//! (`tests/fixtures/`, see its README) against the fake over raw HTTP/1.1 and
//! compares status codes, headers, framing and bodies. Bodies are compared
//! after normalising what differs between any two API servers: uids,
//! resourceVersions, timestamps, audit ids, allocated IPs and ports, generated
//! names, and (where noted) `managedFields` field sets.

use std::path::PathBuf;
use std::time::Duration;

use portico_kube_fake::{FakeApiServer, Options};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// A recorded request: method, path, headers and body.
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn recorded_request(name: &str) -> Recorded {
    let text = fixture(&format!("{name}.request"));
    let (head, body) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
    let mut lines = head.lines();
    let first = lines.next().unwrap();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap().to_string();
    // Anything after the path is a note ("(while: ...)").
    let path = parts.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Recorded {
        method,
        path,
        headers,
        body: body.trim_end().to_string(),
    }
}

/// The recorded status code (first line of `.headers`).
fn recorded_code(name: &str) -> u16 {
    let headers = fixture(&format!("{name}.headers"));
    headers.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A minimal HTTP/1.1 client that keeps the wire format visible.
struct Conn {
    io: BufReader<TcpStream>,
}

struct Head {
    code: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    async fn send(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> Conn {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(req.as_bytes()).await.unwrap();
        Conn {
            io: BufReader::new(stream),
        }
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, self.io.read_line(&mut line))
            .await
            .expect("a line before the deadline")
            .unwrap();
        line
    }

    async fn head(&mut self) -> Head {
        let status = self.line().await;
        assert!(status.starts_with("HTTP/1.1 "), "{status:?}");
        let code = status[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Head { code, headers }
    }

    /// One chunk of a chunked body (`None` at the terminating chunk).
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let size_line = self.line().await;
        let size = usize::from_str_radix(size_line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("chunk size line {size_line:?}"));
        let mut data = vec![0; size + 2];
        tokio::time::timeout(DEADLINE, self.io.read_exact(&mut data))
            .await
            .expect("chunk before the deadline")
            .unwrap();
        assert!(data.ends_with(b"\r\n"), "chunk ends with CRLF");
        data.truncate(size);
        (size > 0).then_some(data)
    }

    /// The whole body, de-chunked if needed.
    async fn body(&mut self, head: &Head) -> Vec<u8> {
        if head.header("transfer-encoding") == Some("chunked") {
            let mut body = Vec::new();
            while let Some(c) = self.chunk().await {
                body.extend(c);
            }
            body
        } else {
            let len: usize = head.header("content-length").unwrap().parse().unwrap();
            let mut body = vec![0; len];
            self.io.read_exact(&mut body).await.unwrap();
            body
        }
    }
}

/// Sends a request, returning the head and the JSON body.
async fn exchange(
    server: &FakeApiServer,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> (Head, Value) {
    let mut conn = Conn::send(server.addr(), method, path, headers, body).await;
    let head = conn.head().await;
    let body = conn.body(&head).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&body)));
    (head, json)
}

/// Replays fixture `name`'s request (as `curl`, like the recording).
async fn replay(server: &FakeApiServer, name: &str) -> (Head, Value) {
    let req = recorded_request(name);
    let mut headers = req.headers.clone();
    headers.push(("User-Agent".into(), "curl/8.5.0".into()));
    exchange(server, &req.method, &req.path, &headers, &req.body).await
}

fn assert_real_headers(head: &Head, expected_code: u16) {
    assert_eq!(head.code, expected_code);
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.header("cache-control"), Some("no-cache, private"));
    assert_eq!(head.header("audit-id").map(str::len), Some(36));
}

/// What may differ between two API servers.
#[derive(Clone, Copy)]
struct Norm {
    /// Drop `managedFields[].fieldsV1` (the fake keeps lists and structs atomic).
    field_sets: bool,
}

fn normalize(v: &Value, norm: Norm) -> Value {
    let mut v = v.clone();
    normalize_in_place(&mut v, norm, "");
    v
}

fn normalize_in_place(v: &mut Value, norm: Norm, key: &str) {
    match v {
        Value::Object(map) => {
            if key == "metadata" {
                for k in ["uid", "resourceVersion", "creationTimestamp"] {
                    if map.get(k).is_some_and(Value::is_string) {
                        map.insert(k.into(), json!(format!("<{k}>")));
                    }
                }
                if let Some(prefix) = map.get("generateName").and_then(Value::as_str) {
                    let name = map["name"].as_str().unwrap();
                    assert!(
                        name.starts_with(prefix) && name.len() == prefix.len() + 5,
                        "{name}"
                    );
                    map.insert("name".into(), json!("<generated>"));
                }
            }
            if key == "managedFields" || map.contains_key("fieldsType") {
                map.insert("time".into(), json!("<time>"));
                if !norm.field_sets {
                    map.remove("fieldsV1");
                }
            }
            for k in ["clusterIP", "nodePort", "healthCheckNodePort"] {
                if map.get(k).is_some_and(|x| x.is_string() || x.is_number()) {
                    map.insert(k.into(), json!(format!("<{k}>")));
                }
            }
            if map.contains_key("clusterIPs") {
                map.insert("clusterIPs".into(), json!(["<clusterIP>"]));
            }
            for (k, child) in map.iter_mut() {
                normalize_in_place(child, norm, k);
            }
        }
        Value::Array(items) => {
            for item in items {
                normalize_in_place(item, norm, key);
            }
        }
        _ => {}
    }
}

const EXACT: Norm = Norm { field_sets: true };
const NO_FIELD_SETS: Norm = Norm { field_sets: false };

fn assert_same(actual: &Value, expected: &Value, norm: Norm) {
    let (a, e) = (normalize(actual, norm), normalize(expected, norm));
    assert_eq!(
        a,
        e,
        "\nactual:   {}\nexpected: {}",
        serde_json::to_string_pretty(&a).unwrap(),
        serde_json::to_string_pretty(&e).unwrap()
    );
}

/// Puts back the `kind`/`apiVersion` a list item leaves out.
fn with_type(item: &Value, api_version: &str, kind: &str) -> Value {
    let mut obj = item.clone();
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    obj
}

/// A server holding the objects of the recorded cluster (01, 03, 04), plus
/// an EndpointSlice of another Service that 04's selector must leave out.
async fn seeded(opts: Options) -> FakeApiServer {
    let server = FakeApiServer::start_with(opts).await.unwrap();
    for item in fixture_json("01-list-services.body")["items"]
        .as_array()
        .unwrap()
    {
        server.create(with_type(item, "v1", "Service")).unwrap();
    }
    for item in fixture_json("03-list-nodes.body")["items"]
        .as_array()
        .unwrap()
    {
        server.create(with_type(item, "v1", "Node")).unwrap();
    }
    let slices = fixture_json("04-list-endpointslices-selector.body");
    for item in slices["items"].as_array().unwrap() {
        let slice = with_type(item, "discovery.k8s.io/v1", "EndpointSlice");
        server.create(slice.clone()).unwrap();
        let mut other = slice;
        other["metadata"]["name"] = json!("kubernetes-xyz12");
        other["metadata"]["labels"]["kubernetes.io/service-name"] = json!("kubernetes");
        server.create(other).unwrap();
    }
    server
}

#[tokio::test]
async fn reads_match_01_to_05() {
    let server = seeded(Options::default()).await;
    for (name, norm) in [
        ("01-list-services", EXACT),
        ("02-get-service", EXACT),
        ("03-list-nodes", EXACT),
        ("04-list-endpointslices-selector", EXACT),
        ("05-get-missing-service", EXACT),
    ] {
        let (head, body) = replay(&server, name).await;
        assert_real_headers(&head, recorded_code(name));
        assert_same(&body, &fixture_json(&format!("{name}.body")), norm);
    }
    // The list's resourceVersion is the current revision, items carry no type.
    let (_, list) = replay(&server, "01-list-services").await;
    assert_eq!(
        list["metadata"]["resourceVersion"],
        server.read(|s| s.revision()).to_string()
    );
    assert!(list["items"][0].get("kind").is_none());
}

#[tokio::test]
async fn status_patches_match_08_09_and_conflict_13() {
    let server = seeded(Options::default()).await;
    for name in [
        "08-patch-status-merge",
        "09-patch-status-apply",
        "13-patch-status-conflict",
    ] {
        let (head, body) = replay(&server, name).await;
        assert_real_headers(&head, recorded_code(name));
        assert_same(&body, &fixture_json(&format!("{name}.body")), EXACT);
    }
}

#[tokio::test]
async fn creates_match_10_11_12_16() {
    let server = seeded(Options::default()).await;
    for (name, norm) in [
        ("10-create-event-core", NO_FIELD_SETS),
        ("11-create-event-eventsv1", NO_FIELD_SETS),
        ("12-create-invalid-source-range", EXACT),
        ("16-create-invalid-source-range-annotation", EXACT),
    ] {
        let (head, body) = replay(&server, name).await;
        assert_real_headers(&head, recorded_code(name));
        assert_same(&body, &fixture_json(&format!("{name}.body")), norm);
    }
    // The rejected Services were not stored; the events were.
    assert_eq!(
        server.list::<k8s_openapi::api::core::v1::Service>().len(),
        2
    );
    assert_eq!(server.list::<k8s_openapi::api::core::v1::Event>().len(), 1);
    assert_eq!(
        server.list::<k8s_openapi::api::events::v1::Event>().len(),
        1
    );
}

#[tokio::test]
async fn unauthorized_matches_14() {
    let server = seeded(Options {
        token: Some("t0ken".into()),
        ..Options::default()
    })
    .await;
    let (head, body) = replay(&server, "14-unauthorized").await;
    assert_real_headers(&head, 401);
    assert_same(&body, &fixture_json("14-unauthorized.body"), EXACT);
    let wrong = [("Authorization".to_string(), "Bearer nope".to_string())];
    let (head, _) = exchange(&server, "GET", "/api/v1/services", &wrong, "").await;
    assert_eq!(head.code, 401);
    let right = [("Authorization".to_string(), "Bearer t0ken".to_string())];
    let (head, _) = exchange(&server, "GET", "/api/v1/services", &right, "").await;
    assert_eq!(head.code, 200);
}

#[tokio::test]
async fn paging_matches_15() {
    let server = seeded(Options::default()).await;
    let (head, body) = replay(&server, "15-list-services-paged").await;
    assert_real_headers(&head, 200);
    let expected = fixture_json("15-list-services-paged.body");
    let mut without_token = body.clone();
    without_token["metadata"]["continue"] = json!("<token>");
    let mut expected_without_token = expected.clone();
    expected_without_token["metadata"]["continue"] = json!("<token>");
    assert_same(&without_token, &expected_without_token, EXACT);
    assert_eq!(body["metadata"]["remainingItemCount"], 1);

    // The token has the real layout and pins the list's revision.
    use base64::Engine as _;
    let decode = |t: &Value| -> Value {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    let ours = decode(&body["metadata"]["continue"]);
    let real = decode(&expected["metadata"]["continue"]);
    assert_eq!(ours["v"], real["v"]);
    assert_eq!(ours["start"], real["start"]);
    assert_eq!(
        ours["rv"].to_string(),
        body["metadata"]["resourceVersion"].as_str().unwrap()
    );

    let path = format!(
        "/api/v1/services?limit=1&continue={}",
        body["metadata"]["continue"].as_str().unwrap()
    );
    let (_, next) = exchange(&server, "GET", &path, &[], "").await;
    assert_eq!(next["items"][0]["metadata"]["name"], "web");
    assert!(next["metadata"].get("continue").is_none());
}

#[tokio::test]
async fn unknown_paths_and_unsupported_fields_get_status_bodies() {
    let server = seeded(Options::default()).await;
    let (head, body) = exchange(&server, "GET", "/api/v1/pods", &[], "").await;
    assert_real_headers(&head, 404);
    assert_eq!(body["reason"], "NotFound");
    assert_eq!(body["kind"], "Status");
    let (head, body) = exchange(
        &server,
        "GET",
        "/api/v1/services?fieldSelector=spec.foo%3Dbar",
        &[],
        "",
    )
    .await;
    assert_real_headers(&head, 400);
    assert_eq!(body["reason"], "BadRequest");
    assert_eq!(body["message"], "field label not supported: spec.foo");
    let (_, body) = exchange(
        &server,
        "GET",
        "/api/v1/services?fieldSelector=metadata.name%3Dweb",
        &[],
        "",
    )
    .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn too_old_watch_matches_07() {
    let server = seeded(Options::default()).await;
    server.compact();
    let horizon = server.read(|s| s.revision());
    let req = recorded_request("07-watch-too-old-rv");
    let mut conn = Conn::send(server.addr(), "GET", &req.path, &[], "").await;
    let head = conn.head().await;
    assert_real_headers(&head, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    let event = conn.chunk().await.expect("one ERROR event");
    assert!(event.ends_with(b"\n"));
    let event: Value = serde_json::from_slice(&event).unwrap();
    let mut expected = fixture_json("07-watch-too-old-rv.body");
    expected["object"]["message"] = json!(format!("too old resource version: 1 ({horizon})"));
    assert_eq!(event, expected);
    assert!(
        conn.chunk().await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test]
async fn watch_matches_06() {
    let server = seeded(Options::default()).await;
    let recorded: Vec<Value> = fixture("06-watch-services.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rv = server.read(|s| s.revision());
    let path = format!(
        "/api/v1/services?allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=2&watch=true"
    );
    let mut conn = Conn::send(server.addr(), "GET", &path, &[], "").await;
    let head = conn.head().await;
    assert_real_headers(&head, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert!(head.header("content-length").is_none());

    // The same writes as the recording: create, patch spec, patch status, delete.
    let created = &recorded[0]["object"];
    let mut web2 = created.clone();
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
    ] {
        web2["metadata"].as_object_mut().unwrap().remove(k);
    }
    web2.as_object_mut().unwrap().remove("status");
    let as_kubectl = |ua: &str, ct: Option<&str>| {
        let mut h = vec![("User-Agent".to_string(), ua.to_string())];
        if let Some(ct) = ct {
            h.push(("Content-Type".to_string(), ct.to_string()));
        }
        h
    };
    let ua = "kubectl-client-side-apply/v1.24.0 (linux/amd64) kubernetes/abc";
    let (head, _) = exchange(
        &server,
        "POST",
        "/api/v1/namespaces/default/services",
        &as_kubectl(ua, Some("application/json")),
        &web2.to_string(),
    )
    .await;
    assert_eq!(head.code, 201);
    let merge = Some("application/merge-patch+json");
    let ua = "kubectl-patch/v1.24.0 (linux/amd64) kubernetes/abc";
    let (head, _) = exchange(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/services/web2",
        &as_kubectl(ua, merge),
        r#"{"spec":{"loadBalancerSourceRanges":["192.0.2.0/25"]}}"#,
    )
    .await;
    assert_eq!(head.code, 200);
    let (head, _) = exchange(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/services/web2/status",
        &as_kubectl(ua, merge),
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.20"}]}}}"#,
    )
    .await;
    assert_eq!(head.code, 200);
    let (head, deleted) = exchange(
        &server,
        "DELETE",
        "/api/v1/namespaces/default/services/web2",
        &as_kubectl("kubectl/v1.24.0", None),
        "",
    )
    .await;
    assert_eq!(head.code, 200);

    // One event per chunk, one JSON object per line, then the end of the stream.
    let deadline = Instant::now() + DEADLINE;
    let mut events = Vec::new();
    while let Some(chunk) = tokio::time::timeout_at(deadline, conn.chunk())
        .await
        .unwrap()
    {
        assert_eq!(chunk.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(chunk.ends_with(b"\n"));
        events.push(serde_json::from_slice::<Value>(&chunk).unwrap());
    }
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["ADDED", "MODIFIED", "MODIFIED", "DELETED", "BOOKMARK"]
    );
    for (ours, real) in events.iter().zip(&recorded).take(4) {
        assert_same(ours, real, NO_FIELD_SETS);
    }
    // Revisions rise by one per write; DELETE returns the object at the delete's revision.
    let rvs: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(rvs, [rv + 1, rv + 2, rv + 3, rv + 4, rv + 4]);
    assert_eq!(deleted["metadata"]["resourceVersion"], (rv + 4).to_string());
    // The bookmark is the empty Service at the last revision, exactly as recorded.
    let mut bookmark = recorded[4].clone();
    bookmark["object"]["metadata"]["resourceVersion"] = json!((rv + 4).to_string());
    assert_eq!(events[4], bookmark);
}

#[tokio::test]
async fn wire_framing_matches_06_http1_chunked() {
    // The raw recording: each chunk is `<hex size>\r\n<one JSON line>\r\n`.
    let raw = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/06-watch-services.http1-chunked"),
    )
    .unwrap();
    let mut rest = raw.as_slice();
    let mut recorded_chunks = 0;
    loop {
        let pos = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..pos]).unwrap(), 16).unwrap();
        rest = &rest[pos + 2..];
        if size == 0 {
            break;
        }
        assert!(rest[..size].ends_with(b"\n"));
        rest = &rest[size + 2..];
        recorded_chunks += 1;
    }
    assert_eq!(recorded_chunks, 5);

    // Ours, read off the socket the same way, for a bookmark-only watch.
    let server = FakeApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(50),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::send(
        server.addr(),
        "GET",
        "/api/v1/services?allowWatchBookmarks=true&resourceVersion=1&watch=1&timeoutSeconds=5",
        &[],
        "",
    )
    .await;
    let head = conn.head().await;
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    let chunk = conn.chunk().await.unwrap();
    let event: Value = serde_json::from_slice(&chunk).unwrap();
    assert_eq!(event["type"], "BOOKMARK");
    assert_eq!(event["object"]["metadata"]["resourceVersion"], "1");
}

/// Exchanges written from the real server's sources (see the fixtures'
/// README): NodePort uniqueness, the immutable class, the Event note limit,
/// a namespace being deleted, a namespace that does not exist, a malformed
/// EndpointSlice address.
#[tokio::test]
async fn refusals_match_17_to_22() {
    let server = seeded(Options::default()).await;
    server
        .create(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "leaving"}, "status": {"phase": "Terminating"}}))
        .unwrap();
    for name in [
        "17-create-nodeport-allocated",
        "18-patch-load-balancer-class",
        "19-create-event-note-too-long",
        "20-create-event-namespace-terminating",
        "21-create-in-missing-namespace",
        "22-create-endpointslice-invalid-address",
    ] {
        let (head, body) = replay(&server, name).await;
        assert_real_headers(&head, recorded_code(name));
        assert_same(&body, &fixture_json(&format!("{name}.body")), EXACT);
    }
    // Nothing was written.
    assert_eq!(
        server.list::<k8s_openapi::api::core::v1::Service>().len(),
        2
    );
    assert!(server
        .list::<k8s_openapi::api::events::v1::Event>()
        .is_empty());
    let web: k8s_openapi::api::core::v1::Service = server.get(Some("default"), "web").unwrap();
    assert_eq!(web.spec.unwrap().load_balancer_class, None);
}
