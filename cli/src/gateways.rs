//! `atoll gateways [--json]`: the gateway replicas, which one holds the duties lease and its
//! generation, and when each was last seen (as the replica that answers knows them from the
//! database).

use atoll_api::gateway::GatewayReplica;

use crate::cli_config::CliConfig;

pub async fn gateways(config: &CliConfig, json: bool) -> anyhow::Result<()> {
    let replicas = config.gateway_client()?.gateways().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&replicas)?);
        return Ok(());
    }
    print!("{}", render(&replicas));
    Ok(())
}

/// The replicas as a table, columns as wide as their longest value.
pub fn render(replicas: &[GatewayReplica]) -> String {
    let rows: Vec<[String; 5]> = replicas
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.addr.clone(),
                if r.holds_lease { "holder".to_string() } else { "-".to_string() },
                r.generation.to_string(),
                format!("{:.1}s ago", r.last_seen_ms as f64 / 1000.0),
            ]
        })
        .collect();
    let header = ["ID", "ADDR", "LEASE", "GENERATION", "LAST SEEN"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let [id, addr, lease, generation, seen] = cells;
        let [w_id, w_addr, w_lease, w_generation, _] = widths;
        format!("{id:<w_id$}  {addr:<w_addr$}  {lease:<w_lease$}  {generation:>w_generation$}  {seen}\n")
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: &str, addr: &str, holds_lease: bool, generation: u64, last_seen_ms: u64) -> GatewayReplica {
        GatewayReplica { id: id.into(), addr: addr.into(), holds_lease, generation, last_seen_ms }
    }

    #[test]
    fn the_table_names_the_holder_and_keeps_its_columns_aligned() {
        let table = render(&[
            replica("gw-1", "10.0.0.1:7000", false, 3, 400),
            replica("gw-2", "10.0.0.2:7000", true, 12, 1_250),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "ID    ADDR           LEASE   GENERATION  LAST SEEN");
        assert_eq!(lines[1], "gw-1  10.0.0.1:7000  -                3  0.4s ago");
        assert_eq!(lines[2], "gw-2  10.0.0.2:7000  holder          12  1.2s ago");
    }

    #[test]
    fn the_json_is_the_documented_shape() {
        let json = serde_json::to_value([replica("gw-1", "10.0.0.1:7000", true, 7, 20)]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "id": "gw-1", "addr": "10.0.0.1:7000", "holds_lease": true, "generation": 7, "last_seen_ms": 20
            }])
        );
    }
}
