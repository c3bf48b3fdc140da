//! A minimal HTTP endpoint for Prometheus: `GET /metrics` answers the text a closure
//! renders; anything else is 404. One short-lived connection at a time, bounded reads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest request head read (a scrape's is a few hundred bytes).
const MAX_REQUEST: usize = 8 << 10;
/// Longest a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A running endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `render()` at `/metrics`.
    pub fn start(
        addr: SocketAddr,
        render: impl Fn() -> String + Send + 'static,
    ) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mcsync-metrics".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if let Err(e) = answer(conn, &render) {
                                log::debug!("metrics request: {e}");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => {
                            log::warn!("metrics endpoint: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request head and answers it.
fn answer(mut conn: TcpStream, render: &impl Fn() -> String) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => respond(
            &mut conn,
            "200 OK",
            mcsync::metrics::CONTENT_TYPE,
            &render(),
        ),
        (Some(b"GET"), _) => respond(&mut conn, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => respond(&mut conn, "405 Method Not Allowed", "text/plain", ""),
    }
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

/// Fetches `http://addr/metrics` (for `mcsync status --watch`).
pub fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    conn.take(64 << 20).read_to_string(&mut text)?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other("malformed HTTP answer"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "{addr}: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_owned())
}

/// One sample: metric name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// The samples of a metrics text (comments skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| {
                let (k, v) = kv.split_once("=\"")?;
                Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
            })
            .collect();
        out.push((name.to_owned(), labels, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), || {
            "mcsync_x_total 3\n# EOF\n".to_owned()
        })
        .unwrap();
        let body = scrape(m.addr()).unwrap();
        assert_eq!(body, "mcsync_x_total 3\n# EOF\n");
        let s = samples(&body);
        assert_eq!(s, vec![("mcsync_x_total".to_owned(), vec![], 3.0)]);
        let mut c = TcpStream::connect(m.addr()).unwrap();
        c.write_all(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        // A client that sends an endless head is cut off.
        let mut c = TcpStream::connect(m.addr()).unwrap();
        let _ = c.write_all(&vec![b'a'; MAX_REQUEST + 2048]);
        let mut r = String::new();
        let _ = c.read_to_string(&mut r);
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    }

    #[test]
    fn samples_parse_labels() {
        let s = samples("a{database=\"d\",user=\"u\"} 1.5\n# TYPE a gauge\nb 2\n");
        assert_eq!(
            s[0],
            (
                "a".to_owned(),
                vec![("database".into(), "d".into()), ("user".into(), "u".into())],
                1.5
            )
        );
        assert_eq!(s[1].2, 2.0);
    }
}
