//! What the guest plays, and what it found: the run's share assembled (the guest's scripts, the
//! repository's deploy/kubernetes, drainer's artifacts, the plan; the systemd units come with the
//! .deb), then the results the guest wrote
//! read back, reported, and turned into the verdict.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::cmd::workspace_root;

/// One scenario the guest knows (guest/run.py).
pub(super) struct Scenario {
    pub(super) name: &'static str,
    /// How long its longest session lasts: the drain it makes `systemctl stop` or the pod wait
    /// for.
    pub(super) hold: Duration,
}

/// Longer than [`TIMEOUT_STOP`] (so only EXTEND_TIMEOUT_USEC keeps systemd from killing the
/// drain) and than 20 s, when drainer renews its first 60 s window.
const HOLD: Duration = Duration::from_secs(25);
/// The `TimeoutStopSec=` the guest's drop-ins give the units.
const TIMEOUT_STOP: Duration = Duration::from_secs(10);

pub(super) const SCENARIOS: &[Scenario] = &[
    // `cargo xtask packages`, the first step of `./x test`, on a machine that runs systemd: the
    // services its packages bring are neither enabled nor started.
    Scenario {
        name: "packages",
        hold: Duration::ZERO,
    },
    // deploy/systemd/app-under-drainer.service: `drainer run` starts the server.
    Scenario {
        name: "wrapper",
        hold: HOLD,
    },
    // deploy/systemd/app-under-drainer.service reloaded: a restart through --restart-signal.
    Scenario {
        name: "reload",
        hold: HOLD,
    },
    // deploy/systemd/drainer.service with app-with-drainer-companion.service.
    Scenario {
        name: "companion",
        hold: HOLD,
    },
    // deploy/kubernetes/deployment.yaml's pod under podman, the kubelet's stop replayed.
    Scenario {
        name: "pod",
        hold: HOLD,
    },
    // What `podman kube play` makes of the manifest: recorded, not asserted. Last, as it once
    // took the guest down with it (see docs/kubernetes.md).
    Scenario {
        name: "kube-play",
        hold: Duration::ZERO,
    },
];

/// Each wait in the guest (a unit starting, a port opening) may take this many times the guest's
/// boot: boots are the yardstick of how fast this machine emulates.
const BUDGET_BOOTS: u32 = 3;

/// What of drainer the guest installs, in the share's `dist/`.
pub(super) struct Artifacts {
    pub(super) files: Vec<PathBuf>,
    /// The Debian package among them (its file name), which the guest installs with apt.
    pub(super) deb: String,
    /// The OCI archive among them, which podman loads.
    pub(super) oci: String,
    /// `cargo xtask` among them, built for the guest: the packages scenario runs its package step.
    pub(super) xtask: String,
}

/// Fills `share` with what the guest's run reads; empties its `results/`.
pub(super) fn prepare(share: &Path, scenarios: &[&Scenario], artifacts: &Artifacts) -> Result<()> {
    if share.exists() {
        fs::remove_dir_all(share).with_context(|| format!("emptying {}", share.display()))?;
    }
    for dir in ["guest", "deploy/kubernetes", "dist", "results"] {
        fs::create_dir_all(share.join(dir))?;
    }
    for (name, text) in [
        ("run.py", include_str!("guest/run.py")),
        ("ws_server.py", include_str!("guest/ws_server.py")),
    ] {
        fs::write(share.join("guest").join(name), text)?;
    }
    let kubernetes = workspace_root().join("deploy/kubernetes");
    for entry in
        fs::read_dir(&kubernetes).with_context(|| format!("reading {}", kubernetes.display()))?
    {
        let entry = entry?;
        fs::copy(
            entry.path(),
            share.join("deploy/kubernetes").join(entry.file_name()),
        )?;
    }
    for file in &artifacts.files {
        let name = file.file_name().context("an artifact without a name")?;
        fs::copy(file, share.join("dist").join(name))
            .with_context(|| format!("copying {}", file.display()))?;
    }
    let plan = json!({
        "scenarios": scenarios.iter().map(|s| s.name).collect::<Vec<_>>(),
        "deb": artifacts.deb,
        "oci": artifacts.oci,
        "xtask": artifacts.xtask,
        "packages_repository": super::image::PACKAGES_IN_GUEST,
        "test_packages": crate::TEST_PACKAGES.iter().map(|(program, package)| json!({"program": program, "package": package})).collect::<Vec<_>>(),
        "hold_s": HOLD.as_secs(),
        "timeout_stop_s": TIMEOUT_STOP.as_secs(),
        "budget_boots": BUDGET_BOOTS,
    });
    fs::write(
        share.join("plan.json"),
        serde_json::to_string_pretty(&plan)?,
    )?;
    Ok(())
}

/// Prints each scenario's checks from the guest's `results/results.json`; fails naming the
/// scenarios that did not pass, or that did not run.
pub(super) fn report(share: &Path, scenarios: &[&Scenario]) -> Result<()> {
    let results = share.join("results");
    let path = results.join("results.json");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "the guest wrote no {}: it stopped before its first scenario; see its console",
            path.display()
        )
    })?;
    let results_json: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let ran = results_json["scenarios"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    eprintln!("\nxtask: vm-deploy summary");
    let mut failed = Vec::new();
    for scenario in &ran {
        let name = scenario["name"].as_str().unwrap_or("?");
        let checks = scenario["checks"].as_array().cloned().unwrap_or_default();
        let error = scenario["error"].as_str();
        let bad: Vec<&Value> = checks
            .iter()
            .filter(|check| check["ok"] != Value::Bool(true))
            .collect();
        let passed = bad.is_empty() && error.is_none();
        eprintln!(
            "  {name}: {} ({} checks, {} failed)",
            if passed { "passed" } else { "FAILED" },
            checks.len(),
            bad.len()
        );
        for check in checks {
            eprintln!(
                "    {} {}",
                if check["ok"] == Value::Bool(true) {
                    "ok    "
                } else {
                    "FAILED"
                },
                check["name"].as_str().unwrap_or("?")
            );
        }
        if let Some(error) = error {
            eprintln!("    error: {}", error.trim_end().replace('\n', "\n      "));
        }
        if !passed {
            failed.push(name.to_owned());
        }
    }
    for scenario in scenarios {
        if !ran.iter().any(|r| r["name"] == scenario.name) {
            failed.push(format!("{} (did not run)", scenario.name));
        }
    }
    eprintln!(
        "  the guest's journal: {}",
        results.join("journal.txt").display()
    );
    if !failed.is_empty() {
        bail!(
            "vm-deploy failed: {}; the checks' evidence is above and in {}",
            failed.join(", "),
            results.display()
        );
    }
    Ok(())
}
