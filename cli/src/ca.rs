//! `atoll ca init|issue`: the mesh CA on disk.

use std::path::Path;

use anyhow::Context;
use atoll_api::Identity;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::HostName;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::pki::MAX_HOST_NAMES;

use crate::args::CaCommand;
use crate::cli_config::parse_duration;

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, name, validity } => {
            let ca = CertificateAuthority::generate(&name, parse_duration(&validity)?)?;
            ca.save(&dir)?;
            println!("created CA {name:?} in {} (ca.pem, ca-key.pem)", dir.display());
            Ok(())
        }
        CaCommand::Issue { dir, cluster, node, operator, gateway, out, name, sans, validity, key } => {
            let identity = match (cluster, node, operator, gateway) {
                (Some(cluster), Some(node), None, None) => {
                    anyhow::ensure!(node >= 1, "--node must be 1 or more");
                    Identity::node(cluster.parse()?, node)
                }
                (None, None, Some(name), None) => Identity::Operator { name },
                (None, None, None, Some(id)) => Identity::Gateway { id },
                _ => anyhow::bail!("say whose certificate: --cluster NAME --node ID, --operator NAME or --gateway ID"),
            };
            // Check the identity is well formed (names, characters) before signing it.
            identity.uri().parse::<Identity>().map_err(|e| anyhow::anyhow!("{e}"))?;
            let key: KeyAlgorithm = key.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let names = sans
                .iter()
                .map(|name| name.parse::<HostName>().map_err(|e| anyhow::anyhow!("--san {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(names.len() <= MAX_HOST_NAMES, "at most {MAX_HOST_NAMES} --san names");
            let ca =
                CertificateAuthority::load(&dir).with_context(|| format!("loading the CA from {}", dir.display()))?;
            let issued = ca.issue_named(&identity, &names, parse_duration(&validity)?, key)?;
            let stem = name.unwrap_or_else(|| default_name(&identity));
            let out = out.as_deref().unwrap_or(Path::new(&dir)).to_path_buf();
            issued.save(&out, &stem)?;
            println!("issued {identity} -> {}/{stem}.pem, {stem}-key.pem", out.display());
            Ok(())
        }
    }
}

fn default_name(identity: &Identity) -> String {
    match identity {
        Identity::Node { cluster, node } => format!("{cluster}-{node}"),
        Identity::Operator { name } => format!("operator-{name}"),
        Identity::Gateway { id } => format!("gateway-{id}"),
    }
}
