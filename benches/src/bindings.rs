//! Output bindings against the clients an application would otherwise link,
//! in one run, measured three ways in interleaved rounds as `backends` does:
//! an operation through a binding, the same operation with the direct client
//! (the `redis` crate's GET; a GET with `mecha-http`, the HTTP layer the
//! binding itself uses, on a new connection each time as the binding opens
//! one), and a binding operation that touches nothing outside
//! (`bindings.postgresql`'s `close`, a no-op): mecha's own path. The tax is
//! the binding's time over the sum of the other two.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use anyhow::{bail, Context};
use mecha_abi::msg::{InvokeBindingReply, InvokeBindingRequest};
use mecha_abi::{Opcode, Status};
use mecha_client::Client;

use crate::backends::{component, measure, Group};
use crate::Plan;

/// The key the Redis rows read.
const KEY: &str = "bench-binding";

/// BINDING_INVOKE of `operation` on binding `name`; checks that the answer
/// is OK and, with `size`, that its data has `size` bytes.
async fn invoke(
    client: &Client,
    name: &str,
    operation: &str,
    metadata: &[(&str, &str)],
    size: Option<usize>,
) -> anyhow::Result<()> {
    let req = InvokeBindingRequest {
        name: name.to_owned(),
        operation: operation.to_owned(),
        data: Vec::new(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let payload = mecha_abi::encode(&req).context("encoding BINDING_INVOKE")?;
    let (status, answer) = client
        .call_raw(Opcode::BINDING_INVOKE, payload)
        .await
        .with_context(|| format!("{operation} on {name}"))?;
    if status != Status::Ok {
        let message = mecha_abi::decode::<mecha_abi::msg::ErrorBody>(&answer)
            .map(|b| b.message)
            .unwrap_or_default();
        bail!("{operation} on {name}: {status}: {message}");
    }
    if let Some(size) = size {
        let reply: InvokeBindingReply = mecha_abi::decode(&answer).context("decoding")?;
        if reply.data.len() != size {
            bail!(
                "{operation} on {name}: {} bytes, not {size}",
                reply.data.len()
            );
        }
    }
    Ok(())
}

/// A loopback HTTP server answering every request with `body`, one thread
/// per connection; answers its port.
fn http_server(body: Vec<u8>) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the HTTP server")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                // The requests carry no body; the head ends at a blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let mut out = &stream;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = out
                    .write_all(head.as_bytes())
                    .and_then(|()| out.write_all(&body));
            });
        }
    });
    Ok(port)
}

/// One GET with `mecha-http` on a new connection, as bindings.http does.
async fn direct_get(port: u16, size: usize) -> anyhow::Result<()> {
    let host = format!("127.0.0.1:{port}");
    let stream = tokio::net::TcpStream::connect(&host)
        .await
        .context("connecting to the HTTP server")?;
    let _ = stream.set_nodelay(true);
    let mut conn = mecha_http::Conn::new(stream);
    let request = mecha_http::request("GET", "/", &host, &[("Connection", "close")], &[])?;
    conn.send(&request).await?;
    let head = conn.response_head(64 << 10).await?;
    let body = conn.body(&head, 4 << 20).await?;
    if head.status != 200 || body.len() != size {
        bail!("GET: {} with {} bytes", head.status, body.len());
    }
    Ok(())
}

/// Runs the groups whose server is installed; the notes say what was
/// skipped.
pub async fn run(bin_dir: &Path, plan: &Plan) -> anyhow::Result<(Vec<Group>, Vec<String>)> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut groups = Vec::new();
    let mut notes = Vec::new();
    let value = vec![0xA5u8; plan.payload];
    let size = value.len();

    let http_port = http_server(value.clone())?;
    let redis_port = crate::daemon::free_port()?;
    let redis = crate::redis::Server::start_tcp(dir.path(), redis_port)?;
    let mut config = [
        // Never connects: `close` is a no-op, so it times the module path.
        component(
            "noop",
            "bindings.postgresql",
            &[
                (
                    "connectionString",
                    "host=127.0.0.1 port=1 user=bench".to_owned(),
                ),
                ("allowedTenants", "*".to_owned()),
            ],
        ),
        component(
            "web",
            "bindings.http",
            &[
                ("url", format!("http://127.0.0.1:{http_port}")),
                ("allowedTenants", "*".to_owned()),
            ],
        ),
    ]
    .concat();
    if redis.is_some() {
        config.push_str(&component(
            "cache",
            "bindings.redis",
            &[
                ("redisHost", format!("127.0.0.1:{redis_port}")),
                ("allowedTenants", "*".to_owned()),
            ],
        ));
    } else {
        notes.push("redis-server is not installed: the Redis row is skipped".into());
    }
    let daemon =
        crate::daemon::Daemon::start_config(bin_dir, dir.path(), &config, &["mecha-mod-bindings"])?;
    let client = Client::connect(daemon.socket())
        .await
        .context("connecting to mechad")?;
    let noop = || invoke(&client, "noop", "close", &[], None);

    if redis.is_some() {
        let direct = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/"))
            .context("configuring the redis client")?
            .get_multiplexed_async_connection()
            .await
            .context("connecting to redis-server over TCP")?;
        redis::cmd("SET")
            .arg(KEY)
            .arg(&value)
            .query_async::<()>(&mut direct.clone())
            .await
            .context("prefilling redis")?;
        groups.push(
            measure(
                "redis get through bindings.redis",
                plan,
                ["bindings.redis get", "redis crate GET", "no-op binding"],
                |_| invoke(&client, "cache", "get", &[("key", KEY)], Some(size)),
                |_| {
                    let mut conn = direct.clone();
                    async move {
                        let got: Vec<u8> = redis::cmd("GET")
                            .arg(KEY)
                            .query_async(&mut conn)
                            .await
                            .context("GET")?;
                        if got.len() != size {
                            bail!("GET: {} bytes", got.len());
                        }
                        Ok(())
                    }
                },
                |_| noop(),
            )
            .await?,
        );
    }
    groups.push(
        measure(
            "http get through bindings.http",
            plan,
            ["bindings.http get", "mecha-http GET", "no-op binding"],
            |_| invoke(&client, "web", "get", &[], Some(size)),
            |_| direct_get(http_port, size),
            |_| noop(),
        )
        .await?,
    );
    drop(client);
    daemon.stop()?;
    Ok((groups, notes))
}
