//! Load generator for `lakehouse serve` (used by scripts/bench-serve): N
//! clients run one query in a loop over Postgres wire or Flight SQL for a
//! fixed time; prints one JSON line with p50/p99 latency and queries/second.
//!
//! usage: serve_bench pg|flight ADDR USER PASSWORD CLIENTS SECONDS SQL

use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        eprintln!("usage: serve_bench pg|flight ADDR USER PASSWORD CLIENTS SECONDS SQL");
        std::process::exit(2);
    }
    let (proto, addr, user, password) = (
        args[1].clone(),
        args[2].clone(),
        args[3].clone(),
        args[4].clone(),
    );
    let clients: usize = args[5].parse().expect("CLIENTS is a number");
    let seconds: u64 = args[6].parse().expect("SECONDS is a number");
    let sql = args[7].clone();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (proto, addr, user, password, sql) = (
            proto.clone(),
            addr.clone(),
            user.clone(),
            password.clone(),
            sql.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            match proto.as_str() {
                "pg" => {
                    let (host, port) = addr.rsplit_once(':').unwrap();
                    let cfg = format!("host={host} port={port} user={user} password='{password}' dbname=lakehouse");
                    let (client, conn) = tokio_postgres::connect(&cfg, tokio_postgres::NoTls).await.expect("connect");
                    tokio::spawn(conn);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let rows = client.simple_query(&sql).await.expect("query");
                        assert!(!rows.is_empty());
                        lat.push(t.elapsed());
                    }
                }
                _ => {
                    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .unwrap()
                        .connect()
                        .await
                        .expect("connect");
                    let mut client = FlightSqlServiceClient::new(channel);
                    client.handshake(&user, &password).await.expect("handshake");
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let info = client.execute(sql.clone(), None).await.expect("query");
                        let ticket = info.endpoint[0].ticket.clone().unwrap();
                        let batches: Vec<_> = client.do_get(ticket).await.expect("do_get").try_collect().await.expect("stream");
                        assert!(!batches.is_empty());
                        lat.push(t.elapsed());
                    }
                }
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64().max(seconds as f64);
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "{{\"protocol\":\"{proto}\",\"clients\":{clients},\"queries\":{},\"qps\":{:.1},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}
