use std::path::Path;

use anyhow::Result;
use drainer::{
    cgroup,
    netns::Netns,
    programs::{Programs, Target},
};

fn main() -> Result<()> {
    let port: u16 = std::env::args().nth(1).unwrap().parse()?;
    let netns = Netns::current()?;
    let cg = cgroup::cgroup2_root()?;
    let mut p = Programs::attach(&Target {
        ports: &[port],
        netns: &netns,
        cgroup: Path::new(&cg),
    })?;
    println!("{:?}", p.counts()?);
    std::thread::sleep(std::time::Duration::from_secs(3));
    println!("{:?}", p.counts()?);
    p.start_refusing()?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    println!("{:?}", p.counts()?);
    Ok(())
}
