//! The peer baseline's scripts (`../shared/peers`), run in the same invocation as ours, and the
//! figures read back from their summary lines.

use std::path::Path;

use anyhow::Context;

/// `median`, `p90` of one SUMMARY metric.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub p90: f64,
}

/// What `etcd-failover` reports for one config.
#[derive(Debug, Clone, Copy)]
pub struct EtcdFailover {
    /// First acknowledged write after the SIGKILL.
    pub write: Summary,
    /// First status naming a new leader: how long etcd takes to notice and replace a dead leader.
    pub new_leader: Summary,
}

/// The number after `name=` in `line`.
fn field(line: &str, name: &str) -> anyhow::Result<f64> {
    let start = line.find(&format!("{name}=")).with_context(|| format!("no {name} in {line:?}"))? + name.len() + 1;
    let rest = &line[start..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    rest[..end].parse::<f64>().with_context(|| format!("bad {name} in {line:?}"))
}

/// Run a peer script, echoing its output as `etcd| ...`; returns its lines.
async fn run_script(script: &Path, args: &[&str]) -> anyhow::Result<Vec<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = child.stdout.take().context("peer script stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut all = Vec::new();
    while let Some(line) = lines.next_line().await? {
        println!("peer| {line}");
        all.push(line);
    }
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "{} failed: {status}", script.display());
    Ok(all)
}

/// `etcd-failover` with the config closest to our defaults (50/250 ms, pre-vote on), `runs` kills.
pub async fn etcd_failover(script: &Path, runs: usize) -> anyhow::Result<EtcdFailover> {
    let lines = run_script(script, &["-n", &runs.to_string(), "-c", "fast-prevote:50:250:--pre-vote=true"]).await?;
    let summary = |metric: &str| -> anyhow::Result<Summary> {
        let line = lines
            .iter()
            .find(|l| l.starts_with("SUMMARY fast-prevote") && l.contains(metric))
            .with_context(|| format!("etcd-failover printed no {metric} SUMMARY line"))?;
        Ok(Summary { median: field(line, "median")?, p90: field(line, "p90")? })
    };
    Ok(EtcdFailover { write: summary("write-unavailability")?, new_leader: summary("new-leader")? })
}

/// What `etcd-throughput` reports for one concurrent phase.
#[derive(Debug, Clone, Copy)]
pub struct EtcdThroughput {
    pub puts_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU of the three members together, in % of one core.
    pub etcd_cpu_pct: f64,
}

/// `etcd-throughput` with one concurrent phase of `conns` connections for `seconds`.
pub async fn etcd_throughput(script: &Path, conns: usize, seconds: u64) -> anyhow::Result<EtcdThroughput> {
    let lines = run_script(script, &["-d", &seconds.to_string(), "-C", &conns.to_string()]).await?;
    let line = lines
        .iter()
        .find(|l| l.starts_with("concurrent") && l.contains(&format!("conns={conns} ")))
        .context("etcd-throughput printed no concurrent phase line")?;
    parse_throughput(line)
}

/// One phase line of `etcd-throughput`.
fn parse_throughput(line: &str) -> anyhow::Result<EtcdThroughput> {
    let before = |marker: &str| -> anyhow::Result<f64> {
        let end = line.find(marker).with_context(|| format!("no {marker:?} in {line:?}"))?;
        line[..end]
            .split_whitespace()
            .last()
            .context("empty")?
            .parse::<f64>()
            .with_context(|| format!("bad number before {marker:?}"))
    };
    let after = |marker: &str| -> anyhow::Result<f64> {
        let start = line.find(marker).with_context(|| format!("no {marker:?} in {line:?}"))? + marker.len();
        line[start..]
            .split_whitespace()
            .next()
            .context("empty")?
            .parse::<f64>()
            .with_context(|| format!("bad number after {marker:?}"))
    };
    Ok(EtcdThroughput {
        puts_per_s: before(" puts/s")?,
        p50_ms: after("p50")?,
        p99_ms: after("p99")?,
        etcd_cpu_pct: after("etcd(3)")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_lines_parse() {
        let line = "concurrent conns=64  procs=1    2966 puts/s  p50  20.20 ms  p90  32.38  p99  45.72  max   62.48 ms | CPU (% of one core): client  40  etcd(3) 128  softirq  11";
        let t = parse_throughput(line).unwrap();
        assert_eq!((t.puts_per_s, t.p50_ms, t.p99_ms, t.etcd_cpu_pct), (2966.0, 20.2, 45.72, 128.0));
        assert!(parse_throughput("concurrent conns=64 nothing here").is_err());
    }

    #[test]
    fn summary_fields_parse() {
        let line =
            "SUMMARY fast-prevote hb=50ms et=250ms new-leader           n=10/10 median=288 p90=341 max=410 min=235 ms";
        assert_eq!(field(line, "median").unwrap(), 288.0);
        assert_eq!(field(line, "p90").unwrap(), 341.0);
        assert!(field(line, "mean").is_err());
    }
}

/// What `loopback-bandwidth` reports about one stream over loopback.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    /// Megabytes per second (10^6 bytes), median of the repeats.
    pub median_mb_s: f64,
    pub min_mb_s: f64,
    pub max_mb_s: f64,
}

/// `loopback-bandwidth` without the fsync part: TLS 1.3 and plain TCP over one loopback
/// connection between two processes (`seconds` x `repeats` each).
pub async fn loopback_streams(script: &Path, seconds: u64, repeats: usize) -> anyhow::Result<(Stream, Stream)> {
    let lines = run_script(script, &["--skip-fsync", "-t", &seconds.to_string(), "-r", &repeats.to_string()]).await?;
    let stream = |label: &str| -> anyhow::Result<Stream> {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("SUMMARY {label}")))
            .with_context(|| format!("loopback-bandwidth printed no {label} SUMMARY line"))?;
        // Gbit/s -> MB/s.
        let mb = |g: f64| g * 1000.0 / 8.0;
        Ok(Stream {
            median_mb_s: mb(field(line, "median")?),
            min_mb_s: mb(field(line, "min")?),
            max_mb_s: mb(field(line, "max")?),
        })
    };
    Ok((stream("python tls13 single-connection")?, stream("python tcp single-connection")?))
}
