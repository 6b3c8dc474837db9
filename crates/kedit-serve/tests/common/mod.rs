//! A small HTTP/1.1 client on a raw `TcpStream`, and the shared server.
//!
//! Why not a client crate: the tests must send what a well-behaved client would not (a
//! body declared as 10 MB, a chunked body that never ends), see the status before the
//! body is sent, and keep the dependency list short; one request per connection
//! (`Connection: close`) makes the protocol a few lines.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use kedit::methods::EditContext;
use kedit_serve::{AppState, ServeConfig, Server};
use serde_json::Value;

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` message of a JSON error reply.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.json()))
            .to_string()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("the server accepts connections");
    // Model work on a busy 2-core machine takes seconds; a hung server fails the test.
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s
}

/// Sends one request and reads the whole reply.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
    let mut s = connect(addr);
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_reply(&mut s)
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, None)
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    request(addr, "POST", path, Some(body.to_string().as_bytes()))
}

/// Reads to the end of the connection (the server may close it with unread input of
/// ours still on the way: what arrived before that is kept).
pub fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no reply head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[eol + 2 + size + 2..];
    }
    body
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn config(model: PathBuf, save_dir: Option<PathBuf>) -> ServeConfig {
    ServeConfig {
        model,
        save_dir,
        facts: workspace().join("../shared/data/known_1000/known_1000.json"),
        context: EditContext::default(),
    }
}

pub struct Harness {
    pub addr: SocketAddr,
    pub state: AppState,
    pub save_dir: PathBuf,
}

/// The one server of this test binary: the real SmolLM2 on 127.0.0.1:0, serving on a
/// thread of its own for as long as the tests run.
pub fn server() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let save_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kedit-serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&save_dir);
        std::fs::create_dir_all(&save_dir).unwrap();
        let config = config(
            workspace().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            Some(save_dir.clone()),
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let server = Server::start(config, "127.0.0.1:0".parse().unwrap(), false)
                    .await
                    .expect("the server starts");
                tx.send((server.local_addr().unwrap(), server.state.clone()))
                    .unwrap();
                server.serve(std::future::pending()).await.unwrap();
            });
        });
        let (addr, state) = rx.recv().expect("the server started");
        Harness {
            addr,
            state,
            save_dir,
        }
    })
}

/// Tests that run the model take turns: the server does one piece of work at a time and
/// answers the rest "busy" (which one test checks on purpose).
pub fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}
