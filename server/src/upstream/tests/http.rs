//! A small HTTP/1.1 server on loopback, on a thread of its own, standing in for a webhook: it
//! records every request and answers as the test's function says.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A request the server took.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// When it arrived (whole).
    pub arrived: Instant,
    /// When its answer was handed to hyper to write.
    pub answered: Option<Instant>,
}

impl Seen {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How to answer a request.
pub(super) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// Waited before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: &[u8]) -> Reply {
        Reply {
            status,
            body: body.to_vec(),
            delay: Duration::ZERO,
        }
    }
}

/// The running server.
pub(super) struct Http {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request, in arrival order.
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
}

impl Http {
    /// Starts a server answering with `answer`.
    pub fn start(answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Http {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let (log, count) = (Arc::clone(&seen), Arc::clone(&connections));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let (log, answer) = (Arc::clone(&log), Arc::clone(&answer));
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, answer) = (Arc::clone(&log), Arc::clone(&answer));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let seen = Seen {
                                headers: parts.headers,
                                body,
                                arrived: Instant::now(),
                                answered: None,
                            };
                            let reply = answer(&seen);
                            let index = {
                                let mut log = log.lock().unwrap();
                                log.push(seen);
                                log.len() - 1
                            };
                            tokio::time::sleep(reply.delay).await;
                            log.lock().unwrap()[index].answered = Some(Instant::now());
                            let mut response = Response::new(Full::new(Bytes::from(reply.body)));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(reply.status).unwrap();
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    tokio::spawn(
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                    );
                }
            });
        });
        Http {
            addr,
            seen,
            connections,
        }
    }

    /// Its URL, at `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
