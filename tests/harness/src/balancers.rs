//! Load balancers in front of the servers drainer guards, from Debian's packages: HAProxy with
//! active health checks, nginx with passive failure detection; and nginx as the reverse proxy of
//! a single host, in front of one app. Each runs in the foreground inside
//! the test's namespace, its configuration (and nginx's pid and temp files) in the test's
//! directory, listening on 127.0.0.1 and balancing over backends on 127.0.0.1.
//!
//! Both pool their connections to the backends and reuse them (keep-alive, `http-reuse always`),
//! proxy WebSocket upgrades, and name the backend that answered in an `X-Served-By` response
//! header, `127.0.0.1:PORT` ([`served_by`]), on upgrades too.
use std::{fs, path::Path, time::Duration};

use crate::{clients::loopback, netns::TestNetns, process::Process, require_program};

/// A balancer process, stopped with SIGTERM when dropped: nginx's workers outlive a master
/// killed outright.
pub struct Balancer {
    process: Process,
}

impl Balancer {
    pub fn process(&self) -> &Process {
        &self.process
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.process.terminate(Duration::from_secs(10));
    }
}

/// The `X-Served-By` value of the backend on 127.0.0.1:`port`.
pub fn served_by(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// HAProxy on 127.0.0.1:`listen` in `netns`, balancing round-robin over `backends`, with its
/// configuration in `dir`; returned once it accepts connections.
///
/// Each backend is health-checked with `GET /health` every second and taken out after two
/// failed checks (`check inter 1s fall 2`); a request whose connection to a backend fails is
/// sent to another (`retries 3`, `option redispatch 1`). Idle connections to the backends are
/// kept for a minute before HAProxy purges any (`pool-purge-delay 60s`), as a busy balancer's
/// pool stays full.
pub fn haproxy(netns: &TestNetns, dir: &Path, listen: u16, backends: &[u16]) -> Balancer {
    let servers: String = backends
        .iter()
        .map(|&port| format!("    server {name} {name}\n", name = served_by(port)))
        .collect();
    let config = format!(
        "global
    log stdout format raw local0 info
    maxconn 4096
defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    http-reuse always
    retries 3
    option redispatch 1
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout tunnel 120s
frontend front
    bind 127.0.0.1:{listen}
    default_backend backends
backend backends
    balance roundrobin
    option httpchk GET /health
    http-response set-header X-Served-By %[srv_name]
    default-server check inter 1s fall 2 rise 2 pool-purge-delay 60s
{servers}"
    );
    require_program("haproxy", "haproxy");
    let path = dir.join("haproxy.cfg");
    fs::write(&path, config).expect("write haproxy.cfg");
    let mut command = netns.command("haproxy");
    command.arg("-f").arg(&path).arg("-db");
    start(netns, "haproxy", command, listen)
}

/// nginx on 127.0.0.1:`listen` in `netns`, balancing round-robin over `backends`, with its
/// configuration, pid file and temp directories in `dir`; returned once it accepts connections.
///
/// Failure detection is passive only, as in nginx's open-source build: a backend whose
/// connection fails is skipped for 30 s (`max_fails=1 fail_timeout=30s`) and the request goes
/// to the next (`proxy_next_upstream error timeout http_502`). Up to 16 idle connections to the
/// backends are kept (`keepalive 16`, HTTP/1.1 with an empty `Connection` header, Upgrade passed
/// through for WebSockets), each taking new requests for 1 s at most (`keepalive_time 1s`, a
/// maximum connection age; nginx's default is 1 h). Only a new connection can fail: with pooled
/// connections reused for an hour or for their 1000 requests (`keepalive_requests`' default),
/// nginx keeps sending a draining backend requests over them long after it refuses new ones.
pub fn nginx(netns: &TestNetns, dir: &Path, listen: u16, backends: &[u16]) -> Balancer {
    let servers: String = backends
        .iter()
        .map(|&port| format!("        server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;\n"))
        .collect();
    run_nginx(
        netns,
        dir,
        listen,
        &format!(
            "    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream backends {{
{servers}        keepalive 16;
        keepalive_timeout 120s;
        keepalive_time 1s;
    }}
    server {{
        listen 127.0.0.1:{listen};
        keepalive_timeout 120s;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_next_upstream error timeout http_502;
            proxy_read_timeout 120s;
            add_header X-Served-By $upstream_addr always;
        }}
    }}
"
        ),
    )
}

/// nginx on 127.0.0.1:`listen` in `netns` as a single host runs it in front of its one app on
/// 127.0.0.1:`backend`: nginx's defaults, a new connection to the app for every request, no
/// retry elsewhere (there is nowhere else), WebSocket upgrades passed through. Its configuration,
/// pid file and temp directories are in `dir`; returned once it accepts connections.
pub fn reverse_proxy(netns: &TestNetns, dir: &Path, listen: u16, backend: u16) -> Balancer {
    run_nginx(
        netns,
        dir,
        listen,
        &format!(
            "    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 120s;
        }}
    }}
"
        ),
    )
}

/// nginx in the foreground with `http` as its http block's body, and its pid and temp files in
/// `dir`, where no other test's are.
fn run_nginx(netns: &TestNetns, dir: &Path, listen: u16, http: &str) -> Balancer {
    let dir = dir.display();
    let config = format!(
        "worker_processes 1;
error_log stderr notice;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}}}
"
    );
    require_program("nginx", "nginx-light");
    let path = format!("{dir}/nginx.conf");
    fs::write(&path, config).expect("write nginx.conf");
    let mut command = netns.command("nginx");
    command
        .args(["-c", &path, "-p", &format!("{dir}/")])
        .args(["-g", "daemon off;"]);
    start(netns, "nginx", command, listen)
}

fn start(netns: &TestNetns, name: &str, command: std::process::Command, listen: u16) -> Balancer {
    let balancer = Balancer {
        process: Process::spawn(name, command),
    };
    netns.wait_until_listening(loopback(listen), Duration::from_secs(20));
    balancer
}
