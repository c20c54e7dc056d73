//! The network the suite's processes live in: one network namespace per process, each with one
//! veth end on a bridge that lives in a namespace of its own (the hub). Addresses come from the
//! benchmarking range 198.18.0.0/15, which then exists only inside these namespaces: no traffic
//! of the suite leaves them.
//!
//! Faults are made with the kernel's own tools: blackhole routes cut a pair both ways; an
//! nftables rule dropping the packets of connections one side opens cuts one direction only;
//! `numgen random` rules drop a share of packets.
//!
//! Every namespace is named `atoll-chaos-<pid>-<role>` after the process that made it, so a run
//! that was killed before it could clean up is swept by the next one ([`sweep_stale`]).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;

use anyhow::Context;

const PREFIX: &str = "atoll-chaos-";
/// The prefix length of the whole benchmarking range: every endpoint is on one segment.
const PREFIX_LEN: u8 = 15;
/// The sandbox's network: every endpoint's address is in it.
pub const NETWORK: &str = "198.18.0.0/15";

/// The namespace this process gives `role`.
pub fn netns_name(role: &str) -> String {
    format!("{PREFIX}{}-{role}", std::process::id())
}

/// Run `ip`/`nft` with `args`; an error carries the command and what it printed.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    let mut command = Command::new(program);
    command.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    if input.is_some() {
        command.stdin(std::process::Stdio::piped());
    }
    let mut child = command.spawn().with_context(|| format!("starting {program} (is it installed?)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).with_context(|| format!("writing to {program}"))?;
    }
    let out = child.wait_with_output().with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fail, saying what is missing, unless this process can build the sandbox.
pub fn preflight() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the chaos suite needs root: it creates network namespaces, veth pairs and nftables rules"
    );
    run("ip", &["-V"]).context("the chaos suite needs iproute2 (`ip`)")?;
    run("nft", &["--version"]).context("the chaos suite needs nftables (`nft`); apt-get install -y nftables")?;
    Ok(())
}

/// Remove namespaces left by suite runs whose process is gone, killing what still runs in
/// them. Returns the names removed.
pub fn sweep_stale() -> anyhow::Result<Vec<String>> {
    let listed = run("ip", &["netns", "list"])?;
    let mut removed = Vec::new();
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(name);
        run("ip", &["netns", "del", name])?;
        removed.push(name.to_string());
    }
    Ok(removed)
}

/// SIGKILL every process in a namespace (resumed first, so a paused one dies too).
fn kill_all_in(netns: &str) -> Vec<u32> {
    let pids = pids_in(netns);
    for pid in &pids {
        let pid = nix::unistd::Pid::from_raw(*pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    pids
}

/// Processes in a namespace (their main thread's), this one excepted: its threads may have
/// entered the namespace.
fn pids_in(netns: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id();
    let Ok(target) = std::fs::metadata(format!("/var/run/netns/{netns}")) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|ns| ns.ino() == target.ino() && ns.dev() == target.dev())
        })
        .collect()
}

/// The packet filter of one namespace, rewritten whole at every change.
#[derive(Debug, Default, Clone)]
struct Filter {
    /// Addresses whose new (and ongoing) connections into this namespace are dropped, with how
    /// many faults refuse each (overlapping faults: the refusal ends with the last of them).
    refuse_from: BTreeMap<Ipv4Addr, usize>,
    /// Percentage of incoming packets dropped on the veth.
    loss_percent: u8,
    /// Connections to (address, port) sent to (address, port) instead: the delaying proxy.
    redirects: BTreeSet<(Ipv4Addr, u16, Ipv4Addr, u16)>,
}

impl Filter {
    fn ruleset(&self) -> String {
        let mut rules = String::new();
        if self.loss_percent > 0 {
            rules.push_str(&format!("    iifname \"eth0\" numgen random mod 100 < {} drop\n", self.loss_percent));
        }
        if !self.refuse_from.is_empty() {
            let set: Vec<String> = self.refuse_from.keys().map(ToString::to_string).collect();
            // Packets in the original direction of a connection the other side opened: this
            // side can still open connections to it and get the answers.
            rules.push_str(&format!("    ip saddr {{ {} }} ct direction original drop\n", set.join(", ")));
        }
        let mut redirects = String::new();
        for (ip, port, to_ip, to_port) in &self.redirects {
            redirects.push_str(&format!("    ip daddr {ip} tcp dport {port} dnat ip to {to_ip}:{to_port}\n"));
        }
        format!(
            "table inet atoll_chaos\ndelete table inet atoll_chaos\ntable inet atoll_chaos {{\n  chain input {{\n    \
             type filter hook input priority 0; policy accept;\n{rules}  }}\n  chain output {{\n    \
             type nat hook output priority -100; policy accept;\n{redirects}  }}\n}}\n"
        )
    }
}

/// One endpoint: a namespace with an address on the bridge.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub role: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// The namespaces of one suite run. Dropping it kills everything still running in them and
/// removes them.
pub struct Sandbox {
    hub: String,
    endpoints: BTreeMap<String, Endpoint>,
    filters: Mutex<BTreeMap<String, Filter>>,
    /// Blackhole routes (namespace, address), with how many cuts hold each: overlapping faults
    /// on one link heal it only when the last of them does.
    blackholes: Mutex<BTreeMap<(String, Ipv4Addr), usize>>,
    removed: bool,
}

impl Sandbox {
    /// Create the hub with its bridge and one namespace per `(role, address)`.
    pub fn create(endpoints: &[(String, Ipv4Addr)]) -> anyhow::Result<Self> {
        let hub = netns_name("hub");
        let mut sandbox = Self {
            hub: hub.clone(),
            endpoints: BTreeMap::new(),
            filters: Mutex::new(BTreeMap::new()),
            blackholes: Mutex::new(BTreeMap::new()),
            removed: false,
        };
        run("ip", &["netns", "add", &hub])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for (index, (role, ip)) in endpoints.iter().enumerate() {
            let netns = netns_name(role);
            let veth = format!("v{index}");
            run("ip", &["netns", "add", &netns])?;
            sandbox.endpoints.insert(role.clone(), Endpoint { role: role.clone(), netns: netns.clone(), ip: *ip });
            run("ip", &["-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
            run("ip", &["-n", &hub, "link", "set", &veth, "master", "br0", "up"])?;
            run("ip", &["-n", &netns, "addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", "eth0"])?;
            run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        }
        Ok(sandbox)
    }

    pub fn endpoint(&self, role: &str) -> anyhow::Result<&Endpoint> {
        self.endpoints.get(role).with_context(|| format!("no endpoint {role:?} in the sandbox"))
    }

    pub fn ip(&self, role: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.endpoint(role)?.ip)
    }

    /// Move the calling thread into `role`'s namespace. Threads it starts afterwards (a tokio
    /// runtime's workers) are there too; sockets stay in the namespace they were made in.
    pub fn enter(&self, role: &str) -> anyhow::Result<()> {
        let path = format!("/var/run/netns/{}", self.endpoint(role)?.netns);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))
    }

    /// Cut `a` and `b` apart both ways (a blackhole route on each side). Cuts count: the link
    /// heals when every cut of it has been healed.
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let (a, b) = (self.endpoint(a)?.clone(), self.endpoint(b)?.clone());
        let mut holes = self.blackholes.lock().expect("blackholes lock");
        for (from, to) in [(&a, &b), (&b, &a)] {
            let held = holes.entry((from.netns.clone(), to.ip)).or_default();
            *held += 1;
            if *held == 1 {
                run("ip", &["-n", &from.netns, "route", "add", "blackhole", &format!("{}/32", to.ip)])?;
            }
        }
        Ok(())
    }

    /// Undo one [`Sandbox::cut`].
    pub fn heal(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let (a, b) = (self.endpoint(a)?.clone(), self.endpoint(b)?.clone());
        let mut holes = self.blackholes.lock().expect("blackholes lock");
        for (from, to) in [(&a, &b), (&b, &a)] {
            let key = (from.netns.clone(), to.ip);
            let Some(held) = holes.get_mut(&key) else { continue };
            *held -= 1;
            if *held == 0 {
                holes.remove(&key);
                run("ip", &["-n", &from.netns, "route", "del", "blackhole", &format!("{}/32", to.ip)])?;
            }
        }
        Ok(())
    }

    /// `from` can no longer open connections to `to` (its open ones stop too); `to` can still
    /// open connections to `from`. Refusals count like cuts: `refused: false` undoes one.
    pub fn refuse(&self, to: &str, from: &str, refused: bool) -> anyhow::Result<()> {
        let from_ip = self.ip(from)?;
        self.update_filter(to, |f| {
            if refused {
                *f.refuse_from.entry(from_ip).or_default() += 1;
            } else if let Some(held) = f.refuse_from.get_mut(&from_ip) {
                *held -= 1;
                if *held == 0 {
                    f.refuse_from.remove(&from_ip);
                }
            }
        })
    }

    /// Drop `percent` % of the packets arriving at every endpoint but `spare`.
    pub fn set_loss(&self, percent: u8, spare: &[&str]) -> anyhow::Result<()> {
        let roles: Vec<String> = self.endpoints.keys().filter(|r| !spare.contains(&r.as_str())).cloned().collect();
        for role in roles {
            self.update_filter(&role, |f| f.loss_percent = percent)?;
        }
        Ok(())
    }

    fn update_filter(&self, role: &str, change: impl FnOnce(&mut Filter)) -> anyhow::Result<()> {
        let netns = self.endpoint(role)?.netns.clone();
        let mut filters = self.filters.lock().expect("filters lock");
        let filter = filters.entry(netns.clone()).or_default();
        change(filter);
        run_with_input("ip", &["netns", "exec", &netns, "nft", "-f", "-"], Some(&filter.ruleset()))
            .with_context(|| format!("setting the packet filter of {role}"))?;
        Ok(())
    }

    /// Send `from`'s new connections to `(to, port)` to the proxy at `(proxy, proxy_port)`.
    pub fn redirect(&self, from: &str, to: &str, port: u16, proxy: &str, proxy_port: u16) -> anyhow::Result<()> {
        let (to_ip, proxy_ip) = (self.ip(to)?, self.ip(proxy)?);
        self.update_filter(from, |f| {
            f.redirects.insert((to_ip, port, proxy_ip, proxy_port));
        })
    }

    /// The path of `role`'s namespace, for threads that enter it.
    pub fn netns_path(&self, role: &str) -> anyhow::Result<String> {
        Ok(format!("/var/run/netns/{}", self.endpoint(role)?.netns))
    }

    /// Undo every cut, refusal and loss rule (redirects to the proxy stay).
    pub fn heal_all(&self) -> anyhow::Result<()> {
        let holes: Vec<(String, Ipv4Addr)> =
            std::mem::take(&mut *self.blackholes.lock().expect("blackholes lock")).into_keys().collect();
        for (netns, ip) in holes {
            run("ip", &["-n", &netns, "route", "del", "blackhole", &format!("{ip}/32")])?;
        }
        let roles: Vec<String> = self.endpoints.keys().cloned().collect();
        for role in roles {
            self.update_filter(&role, |f| {
                f.refuse_from.clear();
                f.loss_percent = 0;
            })?;
        }
        Ok(())
    }

    /// Processes running in `role`'s namespace.
    pub fn pids(&self, role: &str) -> Vec<u32> {
        self.endpoints.get(role).map(|e| pids_in(&e.netns)).unwrap_or_default()
    }

    /// Kill whatever still runs in the namespaces and remove them; returns what had to be
    /// killed, per role (empty when every process had been stopped properly).
    pub fn remove(&mut self) -> anyhow::Result<BTreeMap<String, Vec<u32>>> {
        let mut leftovers = BTreeMap::new();
        for endpoint in self.endpoints.values() {
            let killed = kill_all_in(&endpoint.netns);
            if !killed.is_empty() {
                leftovers.insert(endpoint.role.clone(), killed);
            }
        }
        let mut errors = Vec::new();
        for netns in self.endpoints.values().map(|e| e.netns.clone()).chain([self.hub.clone()]) {
            if let Err(e) = run("ip", &["netns", "del", &netns]) {
                errors.push(format!("{e:#}"));
            }
        }
        self.removed = true;
        anyhow::ensure!(errors.is_empty(), "removing the sandbox: {}", errors.join("; "));
        Ok(leftovers)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = self.remove()
        {
            eprintln!("chaos sandbox: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_drops_what_it_is_told_and_nothing_else() {
        let empty = Filter::default().ruleset();
        assert!(!empty.contains("drop"), "{empty}");
        let filter = Filter {
            refuse_from: [(Ipv4Addr::new(198, 18, 1, 1), 1)].into(),
            loss_percent: 20,
            redirects: [(Ipv4Addr::new(198, 18, 0, 2), 8443, Ipv4Addr::new(198, 18, 0, 3), 20000)].into(),
        };
        let rules = filter.ruleset();
        assert!(rules.contains("ip daddr 198.18.0.2 tcp dport 8443 dnat ip to 198.18.0.3:20000"), "{rules}");
        assert!(rules.contains("iifname \"eth0\" numgen random mod 100 < 20 drop"), "{rules}");
        assert!(rules.contains("ip saddr { 198.18.1.1 } ct direction original drop"), "{rules}");
        assert!(rules.starts_with("table inet atoll_chaos\ndelete table inet atoll_chaos\n"), "{rules}");
    }
}
