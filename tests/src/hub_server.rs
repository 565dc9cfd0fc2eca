//! A small Hub-compatible HTTP server on loopback for upload and download tests: the endpoints
//! hf-hub's create-repo, upload and download paths call, nothing more.
//!
//! - `POST /api/repos/create` (409 when the repo exists);
//! - `POST /api/models/{repo}/preupload/{rev}`: `*.safetensors` are classified `lfs`, the rest
//!   `regular`;
//! - `POST /{repo}.git/info/lfs/objects/batch`: offers the `basic` transfer only, so hf-hub sends
//!   LFS files inline in the commit (it uploads out of band only through xet);
//! - `POST /api/models/{repo}/commit/{rev}`: the NDJSON body (header + base64 `file` lines);
//! - `HEAD`/`GET /{repo}/resolve/{rev}/{file}` with `ETag`, `X-Repo-Commit`, `Content-Length`;
//! - `GET /api/models/{repo}`, `/revision/{rev}`, `/tree/{rev}`.
//!
//! Every request is logged (method, path, whether an `Authorization` header came) for the tests.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{json, Value};

/// One commit: its id and the full file set after it.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub oid: String,
    pub message: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct State {
    /// repo id → commits, oldest first (an empty list: created, never committed).
    pub repos: HashMap<String, Vec<Commit>>,
    /// (method, path, had an Authorization header).
    pub log: Vec<(String, String, bool)>,
    /// Authorization header values received (to check the token is sent, not printed).
    pub tokens: Vec<String>,
}

pub struct HubServer {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl HubServer {
    /// Starts the server on an ephemeral loopback port (threads end with the test process).
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &s);
                });
            }
        });
        Self { url, state }
    }

    /// The files of `repo` at its newest commit.
    pub fn files(&self, repo: &str) -> BTreeMap<String, Vec<u8>> {
        let st = self.state.lock().unwrap();
        st.repos
            .get(repo)
            .and_then(|c| c.last())
            .map(|c| c.files.clone())
            .unwrap_or_default()
    }

    pub fn log(&self) -> Vec<(String, String, bool)> {
        self.state.lock().unwrap().log.clone()
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
    }))
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn json_response(status: u16, v: Value) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: serde_json::to_vec(&v).unwrap_or_default(),
    }
}

fn not_found(what: &str) -> Response {
    json_response(404, json!({ "error": format!("{what} not found") }))
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(req) = read_request(&mut reader)? {
        let resp = handle(&req, state);
        let reason = match resp.status {
            200 => "OK",
            404 => "Not Found",
            409 => "Conflict",
            _ => "Error",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", resp.status);
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !resp.headers.iter().any(|(k, _)| k == "Content-Length") {
            head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        }
        head.push_str("Connection: keep-alive\r\n\r\n");
        out.write_all(head.as_bytes())?;
        if req.method != "HEAD" {
            out.write_all(&resp.body)?;
        }
        out.flush()?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

/// The commit of `repo` a revision names (`main` or a commit id).
fn find<'a>(commits: &'a [Commit], rev: &str) -> Option<&'a Commit> {
    if rev == "main" {
        commits.last()
    } else {
        commits.iter().find(|c| c.oid == rev)
    }
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(req: &Request, state: &Mutex<State>) -> Response {
    let mut st = state.lock().unwrap();
    let auth = req.headers.get("authorization").cloned();
    st.log
        .push((req.method.clone(), req.path.clone(), auth.is_some()));
    if let Some(a) = auth {
        st.tokens.push(a);
    }
    let path = req.path.split('?').next().unwrap_or_default().to_string();
    let seg: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    match (req.method.as_str(), seg.as_slice()) {
        ("POST", ["api", "repos", "create"]) => {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let name = body["name"].as_str().unwrap_or_default();
            let org = body["organization"].as_str().unwrap_or("anonymous");
            let id = format!("{org}/{name}");
            if st.repos.contains_key(&id) {
                return json_response(409, json!({"error": "You already created this model repo"}));
            }
            st.repos.insert(id.clone(), Vec::new());
            json_response(200, json!({"url": format!("http://hub/{id}"), "name": id}))
        }
        ("POST", ["api", "models", owner, name, "preupload", _rev]) => {
            let id = format!("{owner}/{name}");
            if !st.repos.contains_key(&id) {
                return not_found("repository");
            }
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let files: Vec<Value> = body["files"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|f| {
                    let p = f["path"].as_str().unwrap_or_default();
                    let mode = if p.ends_with(".safetensors") {
                        "lfs"
                    } else {
                        "regular"
                    };
                    json!({"path": p, "uploadMode": mode, "shouldIgnore": false})
                })
                .collect();
            json_response(200, json!({ "files": files }))
        }
        ("POST", [owner, name_git, "info", "lfs", "objects", "batch"]) => {
            let name = name_git.trim_end_matches(".git");
            if !st.repos.contains_key(&format!("{owner}/{name}")) {
                return not_found("repository");
            }
            json_response(200, json!({"transfer": "basic", "objects": []}))
        }
        ("POST", ["api", "models", owner, name, "commit", rev]) => {
            let id = format!("{owner}/{name}");
            let Some(commits) = st.repos.get_mut(&id) else {
                return not_found("repository");
            };
            let mut files = find(commits, rev)
                .map(|c| c.files.clone())
                .unwrap_or_default();
            let mut message = String::new();
            for line in req.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let v: Value = match serde_json::from_slice(line) {
                    Ok(v) => v,
                    Err(e) => {
                        return json_response(400, json!({"error": format!("bad NDJSON: {e}")}))
                    }
                };
                match v["key"].as_str() {
                    Some("header") => {
                        message = v["value"]["summary"].as_str().unwrap_or_default().into()
                    }
                    Some("file") => {
                        let p = v["value"]["path"].as_str().unwrap_or_default().to_string();
                        let content = v["value"]["content"].as_str().unwrap_or_default();
                        match base64::engine::general_purpose::STANDARD.decode(content) {
                            Ok(bytes) => {
                                files.insert(p, bytes);
                            }
                            Err(e) => {
                                return json_response(
                                    400,
                                    json!({"error": format!("bad base64: {e}")}),
                                )
                            }
                        }
                    }
                    Some("deletedFile") => {
                        files.remove(v["value"]["path"].as_str().unwrap_or_default());
                    }
                    other => {
                        return json_response(
                            400,
                            json!({"error": format!("unsupported line {other:?}")}),
                        )
                    }
                }
            }
            let mut digest_input = format!("{}{}", commits.len(), message).into_bytes();
            for (k, v) in &files {
                digest_input.extend_from_slice(k.as_bytes());
                digest_input.extend_from_slice(sha256(v).as_bytes());
            }
            let oid = sha256(&digest_input)[..40].to_string();
            commits.push(Commit {
                oid: oid.clone(),
                message: message.clone(),
                files,
            });
            json_response(
                200,
                json!({"commitUrl": format!("http://hub/{id}/commit/{oid}"), "commitOid": oid, "commitMessage": message}),
            )
        }
        ("HEAD" | "GET", [owner, name, "resolve", rev, rest @ ..]) => {
            let id = format!("{owner}/{name}");
            let Some(commits) = st.repos.get(&id) else {
                return not_found("repository");
            };
            let Some(commit) = find(commits, rev) else {
                return not_found("revision");
            };
            let file = rest.join("/");
            match commit.files.get(&file) {
                Some(bytes) => Response {
                    status: 200,
                    headers: vec![
                        ("ETag".into(), format!("\"{}\"", sha256(bytes))),
                        ("X-Repo-Commit".into(), commit.oid.clone()),
                        ("Content-Length".into(), bytes.len().to_string()),
                        ("Content-Type".into(), "application/octet-stream".into()),
                    ],
                    body: bytes.clone(),
                },
                None => {
                    let mut r = not_found("entry");
                    r.headers.push(("X-Repo-Commit".into(), commit.oid.clone()));
                    r
                }
            }
        }
        ("GET", ["api", "models", owner, name, rest @ ..]) => {
            let id = format!("{owner}/{name}");
            let Some(commits) = st.repos.get(&id) else {
                return not_found("repository");
            };
            let rev = match rest {
                [] => "main",
                ["revision", r] | ["tree", r, ..] => r,
                _ => return not_found("endpoint"),
            };
            let Some(commit) = find(commits, rev) else {
                return not_found("revision");
            };
            if let ["tree", ..] = rest {
                let entries: Vec<Value> = commit
                    .files
                    .iter()
                    .map(|(p, b)| json!({"type": "file", "path": p, "size": b.len(), "oid": sha256(b)}))
                    .collect();
                return json_response(200, Value::Array(entries));
            }
            let siblings: Vec<Value> = commit
                .files
                .keys()
                .map(|p| json!({"rfilename": p}))
                .collect();
            json_response(
                200,
                json!({"id": id, "modelId": id, "sha": commit.oid, "siblings": siblings, "private": false}),
            )
        }
        _ => json_response(
            404,
            json!({"error": format!("no route {} {}", req.method, req.path)}),
        ),
    }
}

/// A server that accepts connections and never answers (holds them open): the base URL.
pub fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

/// A server that answers every request with `status`, `headers` and a JSON `body`: the base URL.
pub fn canned_server(status: u16, headers: Vec<(String, String)>, body: Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut headers = headers.clone();
            headers.push(("Content-Type".into(), "application/json".into()));
            let resp = Response {
                status,
                headers,
                body: serde_json::to_vec(&body).unwrap_or_default(),
            };
            std::thread::spawn(move || {
                let mut reader = match stream.try_clone() {
                    Ok(s) => BufReader::new(s),
                    Err(_) => return,
                };
                let mut out = stream;
                while let Ok(Some(req)) = read_request(&mut reader) {
                    let mut head = format!("HTTP/1.1 {} Error\r\n", resp.status);
                    for (k, v) in &resp.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
                    if out.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    if req.method != "HEAD" && out.write_all(&resp.body).is_err() {
                        return;
                    }
                    let _ = out.flush();
                }
            });
        }
    });
    url
}
