//! What drainer must not touch: other ports, other namespaces; and IPv6 like IPv4.
use std::{io::ErrorKind, net::SocketAddr, time::Duration};

use drainer_harness::{
    clients::{connect_many, echo, loopback},
    drainer::{drainer_run, live_field, start_drain},
    netns::TestNetns,
    require_root,
    servers::{echo_server, echo_server_command},
};

/// `drainer run` guards port 8000 alone.
const GUARD_8000: [&str; 4] = ["--port", "8000", "--drain-timeout", "30s"];

#[test]
fn ipv6_connections_are_counted_refused_and_kept() {
    require_root();
    let netns = TestNetns::create();
    let server = echo_server_command(&[("::1", 8000)]);
    let mut drainer = drainer_run(&netns, &GUARD_8000, &server);
    drainer.wait_for("listening", Duration::from_secs(20));
    let addr: SocketAddr = "[::1]:8000".parse().unwrap();

    let mut held = connect_many(&netns, addr, 3);
    let started = start_drain(&drainer);
    assert_eq!(live_field(&started.text), 3);

    let refused = netns
        .connect(addr)
        .expect_err("accepted a new IPv6 connection while draining");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    for stream in &mut held {
        echo(stream, b"v6 still flows").unwrap();
    }
    drop(held);
    drainer.wait_for("drained: no live connections", Duration::from_secs(5));
    drainer.wait(Duration::from_secs(10));
}

#[test]
fn another_port_is_neither_refused_nor_counted() {
    require_root();
    let netns = TestNetns::create();
    let server = echo_server_command(&[("127.0.0.1", 8000), ("127.0.0.1", 8001)]);
    let mut drainer = drainer_run(&netns, &GUARD_8000, &server);
    drainer.wait_for("listening", Duration::from_secs(20));
    let guarded = loopback(8000);
    let other = loopback(8001);

    let guarded_stream = netns.connect(guarded).unwrap();
    let mut other_stream = netns.connect(other).unwrap();
    let started = start_drain(&drainer);
    assert_eq!(
        live_field(&started.text),
        1,
        "only the guarded port's connection counts"
    );

    let mut fresh = netns
        .connect(other)
        .expect("the other port refused a connection");
    echo(&mut fresh, b"other port").unwrap();
    echo(&mut other_stream, b"other port").unwrap();
    // Release depends on the guarded port alone: the other port's connections stay open.
    drop(guarded_stream);
    drainer.wait_for("drained: no live connections", Duration::from_secs(5));
    drainer.wait(Duration::from_secs(10));
}

#[test]
fn the_same_port_in_another_namespace_is_neither_refused_nor_counted() {
    require_root();
    let guarded_ns = TestNetns::create();
    let other_ns = TestNetns::create();
    let server = echo_server_command(&[("127.0.0.1", 8000)]);
    let mut drainer = drainer_run(&guarded_ns, &GUARD_8000, &server);
    drainer.wait_for("listening", Duration::from_secs(20));
    let other_server = echo_server(&other_ns, &[("127.0.0.1", 8000)]);
    let addr = loopback(8000);

    let guarded = guarded_ns.connect(addr).unwrap();
    let mut others = connect_many(&other_ns, addr, 3);
    let started = start_drain(&drainer);
    assert_eq!(
        live_field(&started.text),
        1,
        "the other namespace's connections were counted"
    );

    let refused = guarded_ns
        .connect(addr)
        .expect_err("the guarded namespace accepted while draining");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    let mut fresh = other_ns
        .connect(addr)
        .expect("the other namespace refused a connection");
    echo(&mut fresh, b"elsewhere").unwrap();
    for stream in &mut others {
        echo(stream, b"elsewhere").unwrap();
    }
    drop(guarded);
    drainer.wait_for("drained: no live connections", Duration::from_secs(5));
    drainer.wait(Duration::from_secs(10));
    drop(other_server);
}

#[test]
fn the_servers_own_outbound_connections_to_the_port_are_neither_counted_nor_refused() {
    require_root();
    let guarded_ns = TestNetns::create();
    let remote_ns = TestNetns::create();
    let remote = SocketAddr::new(guarded_ns.link_to(&remote_ns), 8000);
    let _remote_server = echo_server(&remote_ns, &[("0.0.0.0", 8000)]);
    let server = echo_server_command(&[("127.0.0.1", 8000)]);
    let mut drainer = drainer_run(&guarded_ns, &GUARD_8000, &server);
    drainer.wait_for("listening", Duration::from_secs(20));

    // Outbound from the guarded namespace to another host's port 8000.
    let mut outbound = guarded_ns.connect(remote).unwrap();
    let inbound = guarded_ns.connect(loopback(8000)).unwrap();
    let started = start_drain(&drainer);
    assert_eq!(
        live_field(&started.text),
        1,
        "an outbound connection was counted"
    );

    let mut fresh = guarded_ns
        .connect(remote)
        .expect("an outbound connection was refused while draining");
    echo(&mut fresh, b"outbound").unwrap();
    echo(&mut outbound, b"outbound").unwrap();
    drop(inbound);
    drainer.wait_for("drained: no live connections", Duration::from_secs(5));
    drainer.wait(Duration::from_secs(10));
}
