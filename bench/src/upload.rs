//! The `upload` scenario: one account asks `upload.<domain>` for a XEP-0363 slot, PUTs a
//! file of the given size to the slot's URL and GETs it back, as a client sharing a video
//! does. Reports MB/s each way and the server's resident memory while the file passes
//! through it (a server that streams to disk stays flat; one that buffers grows by the
//! file's size).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::conn::{self, Res, Stream};
use crate::scenarios::{Report, Run};
use crate::{stats, xml};

/// Bytes written or read per call.
const CHUNK: usize = 64 * 1024;

pub async fn upload(run: &Run, bytes: usize, pid: Option<u32>) -> Res<Report> {
    let acct = run.names.account(0);
    let mut c = conn::login(&run.ctx, 0, &acct).await?;
    let service = format!("upload.{}", acct.domain);
    c.wbuf.extend_from_slice(b"<iq type='get' id='slot' to='");
    xml::escape_into(&mut c.wbuf, &service);
    c.wbuf.extend_from_slice(
        format!(
            "'><request xmlns='urn:xmpp:http:upload:0' filename='bench.bin' size='{bytes}' \
             content-type='application/octet-stream'/></iq>"
        )
        .as_bytes(),
    );
    c.flush().await?;
    let slot = c.await_iq(b"slot", &mut conn::ignore_other).await?;
    let put = url_of(&slot, b"put").ok_or("no PUT URL in the slot")?;
    let get = url_of(&slot, b"get").ok_or("no GET URL in the slot")?;

    let rss_before = pid.and_then(stats::rss_kib);
    let cpu0 = pid.and_then(stats::proc_cpu);
    let (put_time, put_peak) = sampled(pid, transfer(Method::Put, &put, bytes)).await?;
    let (get_time, get_peak) = sampled(pid, transfer(Method::Get, &get, bytes)).await?;
    let cpu = match (cpu0, pid.and_then(stats::proc_cpu)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    c.close().await;

    let mb = bytes as f64 / 1e6;
    let put_mbps = mb / put_time.as_secs_f64();
    let get_mbps = mb / get_time.as_secs_f64();
    let kib =
        |v: Option<u64>| v.map_or("-".to_string(), |k| format!("{:.1} MB", k as f64 / 1024.0));
    let mut lines = vec![
        format!(
            "upload: {mb:.1} MB PUT in {:.3} s ({put_mbps:.1} MB/s), GET in {:.3} s ({get_mbps:.1} MB/s)",
            put_time.as_secs_f64(),
            get_time.as_secs_f64()
        ),
        format!(
            "server RSS: {} before, peak {} during PUT, peak {} during GET",
            kib(rss_before),
            kib(put_peak),
            kib(get_peak)
        ),
    ];
    if let Some(cpu) = cpu {
        lines.push(format!(
            "server CPU: {:.3} s for both transfers",
            cpu.as_secs_f64()
        ));
    }
    Ok(Report {
        lines,
        json: json!({
            "scenario": "upload",
            "bytes": bytes,
            "put_mb_per_s": put_mbps,
            "get_mb_per_s": get_mbps,
            "server_rss_before_kib": rss_before,
            "server_rss_peak_put_kib": put_peak,
            "server_rss_peak_get_kib": get_peak,
            "server_cpu_s": cpu.map(|c| c.as_secs_f64()),
            "server_pid": pid,
        }),
    })
}

/// The `url` attribute of the slot's `<put/>` or `<get/>`, unescaped.
fn url_of(slot: &[u8], tag: &[u8]) -> Option<String> {
    let at = xml::find_tag(slot, tag, 0)?;
    let url = xml::attr(&slot[at..], b"url")?;
    String::from_utf8(xml::unescape(url)).ok()
}

/// Runs `f` while sampling the server's RSS every 5 ms; its duration and the peak.
async fn sampled(
    pid: Option<u32>,
    f: impl std::future::Future<Output = Res<()>>,
) -> Res<(Duration, Option<u64>)> {
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|pid| {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = stats::rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    let t0 = Instant::now();
    let result = f.await;
    let took = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    result?;
    let peak = peak.load(Ordering::Relaxed);
    Ok((took, (peak > 0).then_some(peak)))
}

enum Method {
    Put,
    Get,
}

/// One HTTP/1.1 request to a loopback URL: PUT `bytes` of a pattern, or GET and check
/// `bytes` of it come back.
async fn transfer(method: Method, url: &str, bytes: usize) -> Res<()> {
    let (tls, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => return Err(format!("not an HTTP URL: {url}").into()),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| "bad port")?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    // Loopback only, as every scenario.
    let ip = match host {
        "localhost" => std::net::IpAddr::from([127, 0, 0, 1]),
        h => h.parse().map_err(|_| format!("not a loopback host: {h}"))?,
    };
    if !ip.is_loopback() {
        return Err(format!("refusing a non-loopback URL: {url}").into());
    }
    let tcp = TcpStream::connect((ip, port)).await?;
    let _ = tcp.set_nodelay(true);
    let mut io = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| "bad TLS name")?;
        Stream::Tls(Box::new(
            conn::tls_connector(false)?.connect(name, tcp).await?,
        ))
    } else {
        Stream::Plain(tcp)
    };
    let head = match method {
        Method::Put => format!(
            "PUT {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {bytes}\r\nConnection: close\r\n\r\n"
        ),
        Method::Get => {
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        }
    };
    io.write_all(head.as_bytes()).await?;
    if let Method::Put = method {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK);
            io.write_all(&chunk[..n]).await?;
            left -= n;
        }
        io.flush().await?;
    }
    // The response: status line and headers, then (GET) the body.
    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::new();
    let body_start = loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > 64 * 1024 {
            return Err("response headers too long".into());
        }
    };
    let status =
        String::from_utf8_lossy(&head[..head.iter().position(|b| *b == b'\r').unwrap_or(0)])
            .into_owned();
    let ok = match method {
        Method::Put => status.contains(" 201") || status.contains(" 200"),
        Method::Get => status.contains(" 200"),
    };
    if !ok {
        return Err(format!("{url}: {status}").into());
    }
    if let Method::Get = method {
        let mut got = head.len() - body_start;
        loop {
            let n = io.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got != bytes {
            return Err(format!("GET returned {got} bytes, not {bytes}").into());
        }
    }
    Ok(())
}
