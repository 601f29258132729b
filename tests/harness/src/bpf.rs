//! drainer's BPF programs and links as the kernel reports them (`bpftool`, `/proc/PID/fdinfo`):
//! what a process holds loaded, what of it is attached, and how often each program ran.
use std::{collections::BTreeMap, fs, process::Command};

/// One of drainer's programs as the kernel reports it.
#[derive(Debug)]
pub struct Program {
    pub name: String,
    /// Runs since it was loaded (counted while `bpf_stats_enabled` is 1).
    pub runs: u64,
}

/// The BPF programs the process `pid` holds, by id, from its descriptors' fdinfo and
/// `bpftool prog show`.
pub fn programs_of(pid: i32) -> BTreeMap<u64, Program> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        // A program's own descriptor has prog_type; a link's names its program with prog_id too.
        if info.contains("prog_type:")
            && let Some(id) = field(&info, "prog_id:")
        {
            ids.push(id);
        }
    }
    let all = bpftool(&["prog", "show"]);
    ids.into_iter()
        .map(|id| {
            let program = all
                .as_array()
                .expect("program list")
                .iter()
                .find(|p| p["id"] == id)
                .unwrap_or_else(|| panic!("bpftool does not list program {id}"));
            (
                id,
                Program {
                    name: program["name"].as_str().unwrap_or_default().to_owned(),
                    runs: program["run_cnt"].as_u64().unwrap_or(0),
                },
            )
        })
        .collect()
}

fn field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
}

/// `bpftool --json ARGS`. A listing names the ids first and opens each after: an object another
/// test's drainer releases in between fails the whole listing, so a failed one is tried again.
fn bpftool(args: &[&str]) -> serde_json::Value {
    const ATTEMPTS: usize = 5;
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        let output = Command::new("bpftool")
            .arg("--json")
            .args(args)
            .output()
            .expect("bpftool");
        if output.status.success() {
            return serde_json::from_slice(&output.stdout).expect("bpftool JSON");
        }
        failures.push(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    panic!("bpftool {args:?} failed {ATTEMPTS} times: {failures:?}");
}

/// The host's BPF links whose program is one of `programs`: (link type, program name).
pub fn links_to(programs: &BTreeMap<u64, Program>) -> Vec<(String, String)> {
    let mut links: Vec<(String, String)> = bpftool(&["link", "show"])
        .as_array()
        .expect("link list")
        .iter()
        .filter_map(|link| {
            let program = programs.get(&link["prog_id"].as_u64()?)?;
            Some((
                link["type"].as_str().unwrap_or_default().to_owned(),
                program.name.clone(),
            ))
        })
        .collect();
    links.sort();
    links
}

pub fn runs(programs: &BTreeMap<u64, Program>, name: &str) -> u64 {
    programs
        .values()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("drainer holds no program {name}: {programs:?}"))
        .runs
}
