//! `mechactl top`: a live terminal view of modules (from STATUS over the
//! socket) and of per-tenant, per-opcode request rates, error rates and
//! latency percentiles (from the daemon's `/metrics`, scraped over HTTP).
//!
//! Rates and percentiles are computed from the difference of two scrapes one
//! interval apart, so every frame shows the last interval, not the averages
//! since the daemon started. Without `--http` only the module table is shown:
//! the ABI carries module state but no traffic counters.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mecha_client::blocking::Client;

use crate::wait::{humantime, parse_duration};

/// Arguments of `mechactl top`.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The daemon's HTTP endpoint (its `--http` address, e.g. 127.0.0.1:9464),
    /// for request rates and latencies. Without it, only modules are shown.
    #[arg(long, env = "MECHA_HTTP")]
    http: Option<String>,
    /// Print one frame (after one interval) and exit, without clearing the screen.
    #[arg(long)]
    once: bool,
    /// Time between frames: e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Most tenant/opcode rows shown, busiest first.
    #[arg(long, default_value_t = 20)]
    rows: usize,
}

/// Largest metrics page read (the daemon's is bounded by its label caps).
const MAX_PAGE: usize = 64 * 1024 * 1024;
/// Connect, read and write timeout of one scrape.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// One sample line of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name, including a `_total`/`_bucket`/... suffix.
    pub name: String,
    /// Label pairs in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text exposition: comment lines are skipped, every other
/// line is `name{k="v",...} value [timestamp]`.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", i + 1))?);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            // A label: key="value", with \\, \" and \n escapes in the value.
            while chars.next_if(|(_, c)| *c == ',' || *c == ' ').is_some() {}
            match chars.peek() {
                Some((i, '}')) => break *i,
                None => return Err("unterminated labels".into()),
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key:?} has no quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.push((key.trim().to_string(), value));
        };
        rest = &body[end + 1..];
    }
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// GETs `path` from `addr` over HTTP/1.1 (`mecha-http`); the body of a 200.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let (head, body) = mecha_http::blocking::get(addr, path, "mechactl", HTTP_TIMEOUT, MAX_PAGE)
        .with_context(|| format!("GET {path} from {addr}"))?;
    if head.status != 200 {
        bail!("{addr}{path}: {} {}", head.status, head.reason);
    }
    String::from_utf8(body).context("the answer is not UTF-8")
}

/// One look at the daemon.
struct Frame {
    at: Instant,
    status: Result<mecha_client::StatusReply, String>,
    metrics: Option<Result<Vec<Sample>, String>>,
}

fn sample(client: &mut Option<Client>, socket: &Path, http: Option<&str>) -> Frame {
    let status = (|| -> Result<mecha_client::StatusReply, String> {
        if client.is_none() {
            let mut c = Client::connect(socket).map_err(|e| e.to_string())?;
            c.set_timeout(HTTP_TIMEOUT);
            *client = Some(c);
        }
        let c = client.as_ref().ok_or("not connected")?;
        c.status().map_err(|e| {
            // Reconnect on the next frame: the daemon may have restarted.
            *client = None;
            e.to_string()
        })
    })();
    let metrics = http.map(|addr| {
        http_get(addr, "/metrics")
            .map_err(|e| format!("{e:#}"))
            .and_then(|text| parse_metrics(&text))
    });
    Frame {
        at: Instant::now(),
        status,
        metrics,
    }
}

/// Counters of one tenant/opcode pair, summed from a scrape.
#[derive(Clone, Debug, Default)]
struct Traffic {
    requests: f64,
    errors: f64,
    /// Cumulative histogram buckets by upper bound.
    buckets: Vec<(f64, f64)>,
}

fn traffic(samples: &[Sample]) -> BTreeMap<(String, String), Traffic> {
    let mut rows: BTreeMap<(String, String), Traffic> = BTreeMap::new();
    for s in samples {
        let (Some(tenant), Some(opcode)) = (s.label("tenant"), s.label("opcode")) else {
            continue;
        };
        let row = rows
            .entry((tenant.to_string(), opcode.to_string()))
            .or_default();
        match s.name.as_str() {
            "mecha_requests_total" => row.requests += s.value,
            "mecha_request_errors_total" => row.errors += s.value,
            "mecha_request_duration_seconds_bucket" => {
                let le = match s.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                row.buckets.push((le, s.value));
            }
            _ => {}
        }
    }
    for row in rows.values_mut() {
        row.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    rows
}

/// The `q` quantile of a cumulative histogram, interpolating linearly within
/// the bucket as Prometheus's `histogram_quantile` does; `None` without data.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = count - lower.1;
            let fraction = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

fn bytes(b: Option<f64>) -> String {
    match b {
        None => "-".into(),
        Some(b) => format!("{:.1}MiB", b / (1024.0 * 1024.0)),
    }
}

/// Per-module value of `name` from a scrape.
fn module_value(samples: &[Sample], name: &str, module: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.label("module") == Some(module))
        .map(|s| s.value)
}

/// One line of the traffic table: the last interval of one tenant/opcode pair.
struct Row {
    tenant: String,
    opcode: String,
    rate: f64,
    errors: f64,
    p50: Option<f64>,
    p99: Option<f64>,
}

fn render(prev: &Frame, now: &Frame, args: &TopArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let current = match &now.metrics {
        Some(Ok(samples)) => Some(samples.as_slice()),
        _ => None,
    };
    match &now.status {
        Ok(status) => {
            let connections = current
                .and_then(|s| s.iter().find(|s| s.name == "mecha_connections_open"))
                .map(|s| format!(", {} connections open", s.value))
                .unwrap_or_default();
            writeln!(
                out,
                "mechad {} (pid {}), up {:.1}s{connections}; every {}",
                status.daemon_version,
                status.pid,
                status.uptime_ms as f64 / 1000.0,
                humantime(args.interval)
            )?;
            writeln!(
                out,
                "{:<14} {:<11} {:>8} {:>8} {:>10} {:>9}",
                "MODULE", "STATE", "PID", "RESTARTS", "RSS", "IN-FLIGHT"
            )?;
            for m in &status.modules {
                let rss = current
                    .and_then(|s| module_value(s, "mecha_module_resident_memory_bytes", &m.name));
                let in_flight = current
                    .and_then(|s| module_value(s, "mecha_module_in_flight_requests", &m.name))
                    .map(|v| format!("{v}"))
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:<14} {:<11} {:>8} {:>8} {:>10} {:>9}",
                    m.name,
                    m.state,
                    m.pid,
                    m.restarts,
                    bytes(rss),
                    in_flight
                )?;
            }
        }
        Err(e) => writeln!(out, "no answer from the daemon: {e}")?,
    }
    writeln!(out)?;
    let (before, after) = match (&prev.metrics, &now.metrics) {
        (_, None) => {
            writeln!(
                out,
                "(per-tenant rates and latencies need the daemon's metrics endpoint: pass --http ADDR or set MECHA_HTTP)"
            )?;
            return Ok(());
        }
        (_, Some(Err(e))) | (Some(Err(e)), _) => {
            writeln!(out, "cannot read metrics: {e}")?;
            return Ok(());
        }
        (Some(Ok(a)), Some(Ok(b))) => (traffic(a), traffic(b)),
        (None, Some(Ok(_))) => return Ok(()),
    };
    let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let mut rows: Vec<Row> = Vec::new();
    for ((tenant, opcode), b) in &after {
        let a = before.get(&(tenant.clone(), opcode.clone()));
        let requests = b.requests - a.map_or(0.0, |a| a.requests);
        if requests <= 0.0 {
            continue;
        }
        let errors = b.errors - a.map_or(0.0, |a| a.errors);
        // Bucket counts since the previous scrape: the interval's histogram.
        let delta: Vec<(f64, f64)> = b
            .buckets
            .iter()
            .map(|(le, n)| {
                let old = a
                    .and_then(|a| a.buckets.iter().find(|(l, _)| l == le))
                    .map_or(0.0, |(_, n)| *n);
                (*le, n - old)
            })
            .collect();
        rows.push(Row {
            tenant: tenant.clone(),
            opcode: opcode.clone(),
            rate: requests / secs,
            errors: errors / secs,
            p50: quantile(&delta, 0.5),
            p99: quantile(&delta, 0.99),
        });
    }
    rows.sort_by(|x, y| y.rate.total_cmp(&x.rate));
    writeln!(
        out,
        "{:<20} {:<18} {:>10} {:>9} {:>9} {:>9}",
        "TENANT", "OPCODE", "REQ/S", "ERR/S", "P50", "P99"
    )?;
    if rows.is_empty() {
        writeln!(
            out,
            "(no requests in the last {})",
            humantime(args.interval)
        )?;
    }
    for r in rows.iter().take(args.rows) {
        writeln!(
            out,
            "{:<20} {:<18} {:>10.1} {:>9.1} {:>9} {:>9}",
            r.tenant,
            r.opcode,
            r.rate,
            r.errors,
            seconds(r.p50),
            seconds(r.p99)
        )?;
    }
    Ok(())
}

/// Shows frames until interrupted, or one with `--once`.
pub fn run(socket: &Path, args: TopArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let mut client = None;
    let http = args.http.as_deref();
    let mut prev = sample(&mut client, socket, http);
    if args.once {
        if let Err(e) = &prev.status {
            bail!("cannot reach the daemon at {}: {e}", socket.display());
        }
        if let Some(Err(e)) = &prev.metrics {
            bail!("cannot read metrics from {}: {e}", http.unwrap_or_default());
        }
    }
    loop {
        std::thread::sleep(args.interval);
        let now = sample(&mut client, socket, http);
        let mut frame = Vec::new();
        render(&prev, &now, &args, &mut frame)?;
        if !args.once {
            // Home the cursor and clear the screen: plain ANSI, no terminal library.
            out.write_all(b"\x1b[H\x1b[2J")?;
        }
        out.write_all(&frame)?;
        out.flush()?;
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        prev = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_escaped_labels() {
        let text = "# HELP x y\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"u\\\\o\\nte\"} 3\nup 1\nh_bucket{le=\"+Inf\"} 7 1700000000\n";
        let s = parse_metrics(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("b"), Some("q\"u\\o\nte"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].labels, vec![]);
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert!(parse_metrics("x{a=1} 2").is_err());
        assert!(parse_metrics("x{a=\"1\"").is_err());
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = [(0.001, 50.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-9, "{p50}");
        let p99 = quantile(&buckets, 0.99).unwrap();
        assert!(p99 > 0.009 && p99 <= 0.01, "{p99}");
        assert_eq!(quantile(&[(1.0, 0.0)], 0.5), None);
    }
}
