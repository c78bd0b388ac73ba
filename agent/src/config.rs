//! The agent's configuration, in one place: clap derive (doc comments are the `--help`), the
//! environment variable names beside their defaults, and parsing in a pure function.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use meshpath_compile::CompileOptions;
use meshpath_datapath::Features;
use meshpath_model::LbPolicy;

pub const ENV_PIN_DIR: &str = "MESHPATH_PIN_DIR";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/meshpath";
pub const ENV_CGROUP: &str = "MESHPATH_CGROUP";
pub const ENV_MANIFESTS: &str = "MESHPATH_MANIFESTS";
pub const ENV_SOURCE: &str = "MESHPATH_SOURCE";
pub const ENV_CGROUP_MOUNT: &str = "MESHPATH_CGROUP_MOUNT";
/// `--cgroup auto`: find the kubelet's kubepods root.
pub const CGROUP_AUTO: &str = "auto";
pub const ENV_KUBECONFIG: &str = "MESHPATH_KUBECONFIG";
pub const ENV_NODE_NAME: &str = "NODE_NAME";
pub const ENV_POD_NAME: &str = "MESHPATH_POD_NAME";
pub const ENV_POD_NAMESPACE: &str = "MESHPATH_POD_NAMESPACE";
pub const ENV_UNINSTALL_CLEANUP: &str = "MESHPATH_UNINSTALL_CLEANUP";
pub const ENV_KUBE_DEBOUNCE_MS: &str = "MESHPATH_KUBE_DEBOUNCE_MS";
pub const DEFAULT_KUBE_DEBOUNCE_MS: u64 = 2;
pub const ENV_BPF_OBJECT: &str = "MESHPATH_BPF_OBJECT";
pub const ENV_CONNECT_LB: &str = "MESHPATH_CONNECT_LB";
pub const ENV_UDP_DATAGRAM_LB: &str = "MESHPATH_UDP_DATAGRAM_LB";
pub const ENV_SOCKET_REDIRECT: &str = "MESHPATH_SOCKET_REDIRECT";
pub const ENV_CONNECTION_LIMITS: &str = "MESHPATH_CONNECTION_LIMITS";
pub const ENV_TCP_METRICS: &str = "MESHPATH_TCP_METRICS";
pub const ENV_TCP_GETPEERNAME: &str = "MESHPATH_TCP_GETPEERNAME";
pub const ENV_UDP_STICKY_TIMEOUT: &str = "MESHPATH_UDP_STICKY_TIMEOUT";
pub const ENV_CONN_LIMIT_SOCK_RELEASE: &str = "MESHPATH_CONN_LIMIT_SOCK_RELEASE";
pub const ENV_BPF_LOG: &str = "MESHPATH_BPF_LOG";
pub const ENV_TCP_METRICS_SAMPLE_MS: &str = "MESHPATH_TCP_METRICS_SAMPLE_MS";
pub const ENV_DEFAULT_LB_POLICY: &str = "MESHPATH_DEFAULT_LB_POLICY";
pub const ENV_SERVICE_CIDR: &str = "MESHPATH_SERVICE_CIDR";
pub const ENV_HTTP_NO_ENDPOINT_503: &str = "MESHPATH_HTTP_NO_ENDPOINT_503";
pub const ENV_PROXY_OWN_HTTP1: &str = "MESHPATH_PROXY_OWN_HTTP1";
/// Unset: as many workers as CPUs the process may use (`cpus::detect`).
pub const ENV_WORKER_THREADS: &str = "MESHPATH_WORKER_THREADS";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const ENV_LOG: &str = "MESHPATH_LOG";
pub const ENV_PROXY_IP: &str = "MESHPATH_PROXY_IP";
pub const ENV_PROXY_NETNS: &str = "MESHPATH_PROXY_NETNS";
pub const ENV_PROXY_PORTS: &str = "MESHPATH_PROXY_PORTS";
pub const ENV_PROXY_FAIL_CLOSED: &str = "MESHPATH_PROXY_FAIL_CLOSED";
pub const ENV_DRAIN_TIMEOUT_MS: &str = "MESHPATH_DRAIN_TIMEOUT_MS";
pub const ENV_RESET_CONNECTIONS: &str = "MESHPATH_RESET_CONNECTIONS";
pub const ENV_AGENT_CGROUP: &str = "MESHPATH_AGENT_CGROUP";
pub const ENV_MAP_BATCH_WRITES: &str = "MESHPATH_MAP_BATCH_WRITES";
pub const ENV_MAX_FRONTENDS: &str = "MESHPATH_MAX_FRONTENDS";
pub const ENV_MAX_BACKENDS: &str = "MESHPATH_MAX_BACKENDS";
pub const ENV_MAX_SERVICE_ENTRIES: &str = "MESHPATH_MAX_SERVICE_ENTRIES";
pub const DEFAULT_PROXY_PORTS: &str = "15100-15999";
pub const ENV_DNS_CAPTURE: &str = "MESHPATH_DNS_CAPTURE";
pub const ENV_DNS_UPSTREAM: &str = "MESHPATH_DNS_UPSTREAM";
pub const ENV_DNS_PORTS: &str = "MESHPATH_DNS_PORTS";
pub const DEFAULT_DNS_PORTS: &str = "15053-15099";
pub const ENV_CLUSTER_DOMAIN: &str = "MESHPATH_CLUSTER_DOMAIN";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
pub const ENV_TRACE_SAMPLING: &str = "MESHPATH_TRACE_SAMPLING";
pub const ENV_TRACE_COLLECTOR: &str = "MESHPATH_TRACE_COLLECTOR";
pub const ENV_TRACE_FORMAT: &str = "MESHPATH_TRACE_FORMAT";
pub const ENV_MESH_ID: &str = "MESHPATH_MESH_ID";
pub const ENV_ADMIN_ADDR: &str = "MESHPATH_ADMIN_ADDR";
pub const ENV_TC_NODEPORT: &str = "MESHPATH_TC_NODEPORT";
pub const ENV_TC_UPLINK: &str = "MESHPATH_TC_UPLINK";
pub const ENV_TC_UPLINK_NETNS: &str = "MESHPATH_TC_UPLINK_NETNS";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";

#[derive(Debug, Parser)]
#[command(
    name = "meshpath",
    version,
    about = "meshpath: a service mesh whose data path lives in the Linux kernel"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: load the eBPF programs, attach them to a cgroup, and keep the maps in
    /// sync with the cluster state.
    Agent(Box<AgentArgs>),
    /// Print the programmed services, their backends and the counters, read from the pinned maps
    /// (works while the agent runs and after it stopped).
    Status(StatusArgs),
    /// Detach meshpath's programs and remove its pinned maps.
    Cleanup(PinDirArg),
    /// Switch same-node socket redirection on or off at run time, for new connections (the agent
    /// must have been started with `--socket-redirect opt-in` or `all` for `on` to have an effect).
    Redirect(RedirectArgs),
    /// Check manifests (Kubernetes and Istio VirtualService/DestinationRule YAML) the way the agent
    /// would, without loading anything: one line per problem on stdout (file, line, object, field,
    /// reason), exit status 1 if there is any.
    Validate(ValidateArgs),
    /// Print a running agent's stats (Envoy's `/stats` text from its admin listener), only the
    /// lines containing FILTER when given, e.g. `meshpath stats upstream_rq_pending_overflow`.
    Stats(StatsArgs),
    /// Show a running agent's service graph as a live table: per edge (workload → service →
    /// workload) requests, 5xx, requests/s, 5xx rate and p99 for HTTP, connections and bytes
    /// for TCP on the kernel path (the figures `/ui` draws).
    Top(TopArgs),
    /// Make a running agent compile everything as at start and compare with what its
    /// per-change passes left in the kernel maps (admin `POST /debug/recompile`): prints what
    /// differed, which the full compile then wrote; exit status 1 if anything did.
    Recompile(AdminAddrArg),
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub interval: f64,
    /// Seconds the rates are measured over (1 to 300).
    #[arg(long, default_value_t = 10.0, value_parser = parse_window)]
    pub window: f64,
    /// Print one table and exit.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub admin: AdminAddrArg,
}

/// A rate window the admin listener accepts: 1 to 300 seconds.
fn parse_window(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=300.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s:?}: between 1 and 300 seconds")),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// A positive, finite number of seconds (at least 0.1).
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.1 => Ok(v),
        Ok(_) => Err(format!("{s:?}: at least 0.1 seconds")),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print only the lines containing this text.
    pub filter: Option<String>,
    #[command(flatten)]
    pub admin: AdminAddrArg,
}

#[derive(Debug, Args)]
pub struct AdminAddrArg {
    /// Address of the agent's admin listener (`/stats`, `/metrics`, `/ready`).
    #[arg(long, env = ENV_ADMIN_ADDR, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Manifest files, or directories whose `*.yaml`/`*.yml` files are read (not recursively).
    /// Give everything that belongs together: routes are checked against the Services and
    /// DestinationRules they name.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// Output format: one line per problem (`FILE:LINE:COL: Severity [CODE] MESSAGE`), or a
    /// JSON array as `istioctl analyze -o json` prints. Exit status 1 only when there are
    /// errors; warnings and infos exit 0.
    #[arg(short = 'o', long, value_enum, default_value_t = ValidateOutput::Text, env = "MESHPATH_VALIDATE_OUTPUT")]
    pub output: ValidateOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ValidateOutput {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RedirectArgs {
    #[arg(value_enum)]
    pub state: OnOff,
    #[command(flatten)]
    pub pin: PinDirArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct PinDirArg {
    /// bpffs directory where the maps and program links are pinned.
    #[arg(long, env = ENV_PIN_DIR, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the cluster state comes from: a directory of manifests, or the Kubernetes API.
    #[arg(long, env = ENV_SOURCE, value_enum, default_value_t = SourceArg::Manifests)]
    pub source: SourceArg,
    /// Directory of Kubernetes YAML manifests (Service, EndpointSlice, Pod, VirtualService,
    /// DestinationRule); watched for changes. Required with `--source manifests`.
    #[arg(
        long,
        env = ENV_MANIFESTS,
        required_if_eq("source", "manifests"),
        required_unless_present("source")
    )]
    pub manifests: Option<PathBuf>,
    /// kubeconfig for `--source kube`; without it: KUBECONFIG, ~/.kube/config, else the
    /// in-cluster service account.
    #[arg(long, env = ENV_KUBECONFIG)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the DaemonSet sets it from `spec.nodeName`): which pods are local.
    #[arg(long, env = ENV_NODE_NAME)]
    pub node_name: Option<String>,
    /// The agent's own pod (the DaemonSet sets both from the downward API), for
    /// --uninstall-cleanup: the pod's controlling DaemonSet is found from it.
    #[arg(long, env = ENV_POD_NAME, requires = "pod_namespace")]
    pub pod_name: Option<String>,
    #[arg(long, env = ENV_POD_NAMESPACE, requires = "pod_name")]
    pub pod_namespace: Option<String>,
    /// With `--source kube` and the pod's name: on SIGTERM, when the pod's DaemonSet or its
    /// namespace is deleted (an uninstall, `kubectl delete -f deploy/`), detach the programs and
    /// remove the pins, as `meshpath cleanup`. Otherwise (a rolling update, a deleted pod, an
    /// unreachable API server) they stay attached for the next agent.
    #[arg(long, env = ENV_UNINSTALL_CLEANUP, default_value_t = true, action = clap::ArgAction::Set)]
    pub uninstall_cleanup: bool,
    /// With `--source kube`: milliseconds to wait after a change for more before programming
    /// them together (a burst of endpoint changes costs one map update).
    #[arg(long, env = ENV_KUBE_DEBOUNCE_MS, default_value_t = DEFAULT_KUBE_DEBOUNCE_MS)]
    pub kube_debounce_ms: u64,
    /// cgroup v2 directory whose sockets (and its descendants') meshpath manages, or `auto`: the
    /// kubelet's kubepods root under --cgroup-mount (kubepods.slice with the systemd cgroup
    /// driver, kubepods with cgroupfs), which covers every pod of the node.
    #[arg(long, env = ENV_CGROUP)]
    pub cgroup: PathBuf,
    /// Where the node's cgroup v2 hierarchy is mounted (in the DaemonSet: the host's, mounted
    /// into the container), for `--cgroup auto` and for finding local pods' cgroups.
    #[arg(long, env = ENV_CGROUP_MOUNT, default_value = crate::cgroup_layout::DEFAULT_CGROUP2_MOUNT)]
    pub cgroup_mount: PathBuf,
    #[command(flatten)]
    pub pin: PinDirArg,
    /// eBPF object to load instead of the one embedded at build time.
    #[arg(long, env = ENV_BPF_OBJECT)]
    pub bpf_object: Option<PathBuf>,
    /// Translate connect() to a ClusterIP in the kernel (connect4 + getpeername4). Off: not attached.
    #[arg(long, env = ENV_CONNECT_LB, default_value_t = true, action = clap::ArgAction::Set)]
    pub connect_lb: bool,
    /// Translate unconnected UDP datagrams (sendmsg4 + recvmsg4). Off: not attached.
    #[arg(long, env = ENV_UDP_DATAGRAM_LB, default_value_t = true, action = clap::ArgAction::Set)]
    pub udp_datagram_lb: bool,
    /// Seconds an unconnected UDP socket keeps the backend its datagrams to a service went to,
    /// after its last one, as conntrack keeps a UDP flow (a stateful UDP protocol needs its
    /// peer to stay); a backend leaving the service ends it at once. 0: a new pick per datagram.
    #[arg(long, env = ENV_UDP_STICKY_TIMEOUT, default_value_t = 120)]
    pub udp_sticky_timeout: u32,
    /// Hand bytes between two sockets of the managed cgroups on this node directly (sock_ops +
    /// sk_msg), skipping TCP/IP. A redirected socket's blocking `recv()` can return EAGAIN, which
    /// blocking clients (libpq, Python's `socket`) take for an error, so by default (`opt-in`)
    /// only the node proxy's own sockets and those of pods annotated (or in a namespace
    /// annotated) `meshpath.io/socket-redirect: "true"` are redirected. `all`: every socket
    /// (`true` is accepted for it). `off` (or `false`): sk_msg is not attached.
    #[arg(long, env = ENV_SOCKET_REDIRECT, value_enum, default_value_t = SocketRedirectArg::OptIn)]
    pub socket_redirect: SocketRedirectArg,
    /// Enforce DestinationRule `connectionPool.tcp.maxConnections` in the kernel for services on
    /// the pure kernel path (connect4 counts, sock_ops releases). Off: no limit, sock_ops not
    /// attached for it.
    #[arg(long, env = ENV_CONNECTION_LIMITS, default_value_t = true, action = clap::ArgAction::Set)]
    pub connection_limits: bool,
    /// With `--connection-limits`: also free a connection's slot when its socket is released
    /// (cgroup/sock_release), which the kernel runs however the socket went: a connect that
    /// failed before its SYN never reaches sock_ops. Off: not attached; such slots stay taken
    /// until the socket's owner connects it again or the agent restarts over fresh maps.
    #[arg(long, env = ENV_CONN_LIMIT_SOCK_RELEASE, default_value_t = true, action = clap::ArgAction::Set)]
    pub conn_limit_sock_release: bool,
    /// Istio's TCP metrics (`istio_tcp_*` on `/metrics`) for kernel-path services, counted by
    /// sock_ops at connection open and close (never per packet), live connections sampled by a
    /// TCP socket iterator. Off: sock_ops records nothing for them, the iterator is not loaded.
    #[arg(long, env = ENV_TCP_METRICS, default_value_t = true, action = clap::ArgAction::Set)]
    pub tcp_metrics: bool,
    /// getpeername() of a TCP socket connected through a ClusterIP shows the ClusterIP:port, as
    /// kube-proxy's DNAT does. Off: it shows the backend the connect went to, and connect4 gives
    /// the socket no storage unless the TCP metrics need it (creating that storage is most of
    /// what a translated connect costs in the kernel). UDP sockets keep their reversal.
    #[arg(long, env = ENV_TCP_GETPEERNAME, default_value_t = true, action = clap::ArgAction::Set)]
    pub tcp_getpeername: bool,
    /// How often live connections' bytes reach `istio_tcp_*_bytes_total` (milliseconds): the
    /// agent runs the kernel's TCP socket iterator over the pods' namespaces this often; closes
    /// always report at once.
    #[arg(long, env = ENV_TCP_METRICS_SAMPLE_MS, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub tcp_metrics_sample_ms: u32,
    /// The kernel programs' debug events (connects translated or refused, sockhash insert
    /// failures) through aya-log into the agent's log (target `meshpath::bpf`, debug level).
    /// Off: the verifier removes the logging code, so the programs pay nothing.
    #[arg(long, env = ENV_BPF_LOG, default_value_t = false, action = clap::ArgAction::Set)]
    pub bpf_log: bool,
    /// NodePort, `externalIPs` and LoadBalancer ingress IPs served by tc programs on the
    /// node's uplink (`--tc-uplink`): per-packet load balancing with connection tracking for
    /// clients outside the node. Off (or no `--tc-uplink`): the programs are not attached and
    /// any a previous agent pinned are detached.
    #[arg(long, env = ENV_TC_NODEPORT, default_value_t = true, action = clap::ArgAction::Set)]
    pub tc_nodeport: bool,
    /// The node's uplink interface (where outside clients' packets arrive, e.g. eth0); its
    /// IPv4 addresses are where NodePorts answer. Unset: the tc path is off.
    #[arg(long, env = ENV_TC_UPLINK)]
    pub tc_uplink: Option<String>,
    /// Network namespace of `--tc-uplink` (e.g. /var/run/netns/NAME), when it is not the
    /// agent's own.
    #[arg(long, env = ENV_TC_UPLINK_NETNS)]
    pub tc_uplink_netns: Option<PathBuf>,
    #[command(flatten)]
    pub tc_veth: crate::tc_veth::VethArgs,
    /// Load-balancing policy for services without a `meshpath.io/lb-policy` annotation.
    #[arg(long, env = ENV_DEFAULT_LB_POLICY, value_enum, default_value_t = PolicyArg::Random)]
    pub default_lb_policy: PolicyArg,
    /// Address pods reach the node proxy at (e.g. the node IP, or the pods' gateway). Services
    /// with L7 rules (VirtualService http routes, L7-only DestinationRule policies) are steered
    /// to it; without it every service stays on the kernel path.
    #[arg(long, env = ENV_PROXY_IP)]
    pub proxy_ip: Option<Ipv4Addr>,
    /// Network namespace (e.g. /var/run/netns/NAME) to open the proxy's listeners in, when pods
    /// reach the proxy address there rather than in the agent's own namespace.
    #[arg(long, env = ENV_PROXY_NETNS)]
    pub proxy_netns: Option<PathBuf>,
    /// Port range for the proxy's listeners, one per steered ClusterIP:port.
    #[arg(long, env = ENV_PROXY_PORTS, default_value = DEFAULT_PROXY_PORTS, value_parser = parse_port_range)]
    pub proxy_ports: (u16, u16),
    /// An HTTP port (named `http`/`http-*`, or `appProtocol: http`) of a Service with no ready
    /// endpoint is steered to the proxy, which answers 503 "no healthy upstream" as Envoy does,
    /// instead of the kernel refusing the connection. Needs --proxy-ip.
    #[arg(long, env = ENV_HTTP_NO_ENDPOINT_503, default_value_t = true, action = clap::ArgAction::Set)]
    pub http_no_endpoint_503: bool,
    /// The proxy serves plain HTTP/1.1 requests (a body of at most 64 KiB with its length, no
    /// upgrade, no `Expect`) with its own lean server, and hands a connection to hyper's server
    /// at its first other request; `false`: hyper's server for every connection.
    #[arg(long, env = ENV_PROXY_OWN_HTTP1, default_value_t = true, action = clap::ArgAction::Set)]
    pub proxy_own_http1: bool,
    /// Worker threads of the agent's runtime and of the proxy's. Default: the CPUs this
    /// process may use, the smaller of its scheduler affinity and its cgroup's `cpu.max`
    /// quota (rounded up).
    #[arg(long, env = ENV_WORKER_THREADS, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
    /// Steered services (`namespace/name`, comma-separated; `*` for all) whose connects are
    /// refused while no proxy listens for them (agent restarting, proxy down). The others
    /// fail open: the kernel balances them at L4 over their endpoints meanwhile, without their
    /// L7 rules.
    #[arg(long, env = ENV_PROXY_FAIL_CLOSED, value_delimiter = ',')]
    pub proxy_fail_closed: Vec<String>,
    /// On SIGTERM/SIGINT, how long the proxy lets in-flight requests finish (after it stopped
    /// accepting and the kernel moved new connects to the L4 fallback) before the agent exits.
    #[arg(long, env = ENV_DRAIN_TIMEOUT_MS, default_value_t = 3000)]
    pub drain_timeout_ms: u64,
    /// When a service gains rules only the node proxy applies, or a backend leaves every
    /// kernel-path service, reset the managed pods' TCP connections the kernel had balanced
    /// there (netlink sock_diag `SOCK_DESTROY` in each pod's network namespace, as `ss -K`), so
    /// their clients reconnect through the current rules, as Istio's proxies close theirs. Off:
    /// such a connection keeps its connect()-time destination until the client reconnects.
    #[arg(long, env = ENV_RESET_CONNECTIONS, default_value_t = true, action = clap::ArgAction::Set)]
    pub reset_connections: bool,
    /// Move the agent process into this cgroup v2 directory at start (e.g. a child of
    /// `--cgroup`), so the node proxy's own sockets are managed too and same-node socket
    /// redirection applies to them. An agent that already runs under the managed cgroup (as a
    /// DaemonSet under the root cgroup does) needs nothing.
    #[arg(long, env = ENV_AGENT_CGROUP)]
    pub agent_cgroup: Option<PathBuf>,
    /// Write the service maps' entries many per syscall (`BPF_MAP_UPDATE_BATCH`, Linux 5.6+;
    /// one per entry where the kernel lacks it): the full sync at 10 000 Services writes some
    /// 300 000. Off: one `BPF_MAP_UPDATE_ELEM` per entry.
    #[arg(long, env = ENV_MAP_BATCH_WRITES, default_value_t = true, action = clap::ArgAction::Set)]
    pub map_batch_writes: bool,
    /// Frontends (ClusterIP:port pairs, one service id each) the kernel maps hold: the size of
    /// the per-service arrays, which cost their whole size in kernel memory (the per-CPU
    /// service stats 40 B × this × CPUs). The default fits 10 000 single-port Services.
    #[arg(long, env = ENV_MAX_FRONTENDS, default_value_t = meshpath_common::MAX_SERVICE_IDS,
          value_parser = clap::value_parser!(u32).range(2..=16_777_216))]
    pub max_frontends: u32,
    /// Backends (pod address:port) the kernel's backend map holds (preallocated, about 100 B
    /// each). The default fits 10 000 Services of 10 endpoints.
    #[arg(long, env = ENV_MAX_BACKENDS, default_value_t = meshpath_common::MAX_BACKENDS,
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_backends: u32,
    /// Entries of the kernel's service map (and of the map of each frontend's backends): one per
    /// frontend plus one per backend slot of each frontend (preallocated, about 100 B each).
    #[arg(long, env = ENV_MAX_SERVICE_ENTRIES, default_value_t = meshpath_common::MAX_SERVICE_ENTRIES,
          value_parser = clap::value_parser!(u32).range(2..=67_108_864))]
    pub max_service_entries: u32,
    /// CIDR to allocate ClusterIPs from for Services whose manifest has no `spec.clusterIP`.
    #[arg(long, env = ENV_SERVICE_CIDR, default_value = DEFAULT_SERVICE_CIDR, value_parser = parse_cidr)]
    pub service_cidr: (Ipv4Addr, u8),
    /// Answer the pods' DNS queries for Service names in the agent and relay the rest to the
    /// resolver each pod asked (the kernel steers queries to the resolvers of --dns-upstream and
    /// kube-system/kube-dns to the agent). Needs --proxy-ip (the listeners' address). Default:
    /// on with --source manifests, off with --source kube (opt-in, as Istio's DNS capture).
    #[arg(long, env = ENV_DNS_CAPTURE, action = clap::ArgAction::Set)]
    pub dns_capture: Option<bool>,
    /// Resolvers (IP or IP:PORT, comma-separated) whose queries are captured; default: the
    /// nameservers of the agent's /etc/resolv.conf. kube-system/kube-dns's ClusterIP always is.
    #[arg(long, env = ENV_DNS_UPSTREAM, value_delimiter = ',', value_parser = parse_resolver)]
    pub dns_upstream: Vec<SocketAddrV4>,
    /// Port range for the DNS listeners (UDP and TCP), one port per captured resolver.
    #[arg(long, env = ENV_DNS_PORTS, default_value = DEFAULT_DNS_PORTS, value_parser = parse_port_range)]
    pub dns_ports: (u16, u16),
    /// The cluster's DNS domain: Services are `<name>.<namespace>.svc.<domain>`.
    #[arg(long, env = ENV_CLUSTER_DOMAIN, default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// Percentage (0-100) of new traces the node proxy samples, Istio's `sampling` (default 1).
    /// An incoming `x-b3-sampled`/`b3` decision wins; a client pod's `proxy.istio.io/config`
    /// `tracing.sampling` overrides it for that pod's requests.
    #[arg(long, env = ENV_TRACE_SAMPLING, default_value = "1", value_parser = parse_percent)]
    pub trace_sampling: u32,
    /// Collector to send the proxy's spans to: `http://HOST:PORT` (the format's path is added)
    /// or a full URL. Without it no span is built.
    #[arg(long, env = ENV_TRACE_COLLECTOR)]
    pub trace_collector: Option<String>,
    /// Zipkin v2 JSON (`/api/v2/spans`) or OTLP/HTTP JSON (`/v1/traces`).
    #[arg(long, env = ENV_TRACE_FORMAT, value_enum, default_value_t = TraceFormatArg::Zipkin)]
    pub trace_format: TraceFormatArg,
    /// Istio's mesh id, the `istio.mesh_id` span tag.
    #[arg(long, env = ENV_MESH_ID, default_value = "cluster.local")]
    pub mesh_id: String,
    #[command(flatten)]
    pub admin: AdminAddrArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TraceFormatArg {
    Zipkin,
    Otlp,
}

/// Tracing of the node proxy (see `AgentArgs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// Hundredths of a percent (integer so the config stays `Eq`).
    pub sampling_hundredths: u32,
    pub collector: Option<String>,
    pub format: TraceFormatArg,
    pub mesh_id: String,
}

/// `12.5` → 1250 (hundredths of a percent).
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?}: a percentage between 0 and 100"));
    }
    // In range: the cast cannot truncate.
    Ok((v * 100.0).round() as u32)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    /// `--manifests DIR`.
    Manifests,
    /// The Kubernetes API (kube-rs watchers).
    Kube,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    Random,
    RoundRobin,
}

/// What the agent runs with, derived from the arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub source: SourceConfig,
    pub node_name: Option<String>,
    pub cgroup_mount: PathBuf,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub bpf_object: Option<PathBuf>,
    pub features: Features,
    pub compile: CompileOptions,
    pub proxy: Option<ProxyConfig>,
    pub admin_addr: SocketAddr,
    pub agent_cgroup: Option<PathBuf>,
    /// `--reset-connections`.
    pub reset_connections: bool,
    /// `--map-batch-writes`.
    pub map_batch_writes: bool,
    /// Whose DaemonSet's deletion makes a stopping agent remove its programs
    /// (`--uninstall-cleanup` with `--pod-name`/`--pod-namespace` and `--source kube`).
    pub uninstall_cleanup: Option<meshpath_source::kube::lifecycle::PodRef>,
    /// `None`: DNS capture off. Empty `upstreams`: the agent's /etc/resolv.conf decides at start.
    pub dns: Option<crate::dns::DnsConfig>,
    /// `--dns-capture true` given without `--proxy-ip`: reported at start.
    pub dns_without_proxy: bool,
    pub trace: TraceConfig,
    /// Where the tc path attaches; `None`: off (`--tc-nodeport false` or no `--tc-uplink`).
    pub tc_uplink: Option<meshpath_datapath::tc_uplink::Uplink>,
    /// The pods' veths' tc path; `None`: off (`--tc-pod-veths false`).
    pub tc_veth: Option<crate::tc_veth::VethConfig>,
    /// `--worker-threads`; `None`: from the CPUs the process may use.
    pub worker_threads: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    Manifests(PathBuf),
    Kube(meshpath_source::kube::KubeOptions),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub ip: Ipv4Addr,
    pub netns: Option<PathBuf>,
    pub ports: (u16, u16),
    /// `--http-no-endpoint-503`.
    pub http_no_endpoint_503: bool,
    /// `--proxy-own-http1`.
    pub own_http1: bool,
    pub fail_closed: meshpath_compile::steer::FailClosed,
    pub drain_timeout: std::time::Duration,
}

impl From<&AgentArgs> for AgentConfig {
    fn from(a: &AgentArgs) -> Self {
        let source = match (a.source, &a.manifests) {
            (SourceArg::Manifests, Some(dir)) => SourceConfig::Manifests(dir.clone()),
            // clap requires --manifests with --source manifests.
            (SourceArg::Manifests, None) => unreachable!("--manifests is required"),
            (SourceArg::Kube, _) => SourceConfig::Kube(meshpath_source::kube::KubeOptions {
                kubeconfig: a.kubeconfig.clone(),
                debounce: std::time::Duration::from_millis(a.kube_debounce_ms),
            }),
        };
        let dns_capture = a
            .dns_capture
            .unwrap_or(matches!(source, SourceConfig::Manifests(_)));
        let dns = match (dns_capture, a.proxy_ip) {
            (true, Some(ip)) => Some(crate::dns::DnsConfig {
                ip,
                netns: a.proxy_netns.clone(),
                ports: a.dns_ports,
                cluster_domain: a.cluster_domain.trim_matches('.').to_ascii_lowercase(),
                upstreams: a.dns_upstream.clone(),
            }),
            _ => None,
        };
        let uninstall_cleanup = match (&source, &a.pod_name, &a.pod_namespace) {
            (SourceConfig::Kube(_), Some(name), Some(namespace)) if a.uninstall_cleanup => {
                Some(meshpath_source::kube::lifecycle::PodRef {
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
            }
            _ => None,
        };
        Self {
            dns,
            dns_without_proxy: a.dns_capture == Some(true) && a.proxy_ip.is_none(),
            source,
            node_name: a.node_name.clone(),
            cgroup_mount: a.cgroup_mount.clone(),
            cgroup: a.cgroup.clone(),
            pin_dir: a.pin.pin_dir.clone(),
            bpf_object: a.bpf_object.clone(),
            admin_addr: a.admin.admin_addr,
            features: Features {
                connect_lb: a.connect_lb,
                udp_datagram_lb: a.udp_datagram_lb,
                socket_redirect: a.socket_redirect.into(),
                connection_limits: a.connection_limits,
                tcp_metrics: a.tcp_metrics,
                tcp_metrics_sample_ms: a.tcp_metrics_sample_ms,
                tcp_getpeername: a.tcp_getpeername,
                udp_sticky_timeout_sec: a.udp_sticky_timeout,
                conn_limit_sock_release: a.conn_limit_sock_release,
                bpf_log: a.bpf_log,
                capacity: meshpath_datapath::MapCapacity {
                    frontends: a.max_frontends,
                    backends: a.max_backends,
                    service_entries: a.max_service_entries,
                },
            },
            agent_cgroup: a.agent_cgroup.clone(),
            reset_connections: a.reset_connections,
            map_batch_writes: a.map_batch_writes,
            uninstall_cleanup,
            tc_uplink: match (a.tc_nodeport, &a.tc_uplink) {
                (true, Some(iface)) => Some(meshpath_datapath::tc_uplink::Uplink {
                    iface: iface.clone(),
                    netns: a.tc_uplink_netns.clone(),
                }),
                _ => None,
            },
            tc_veth: a.tc_veth.config(),
            worker_threads: a.worker_threads.map(usize::from),
            trace: TraceConfig {
                sampling_hundredths: a.trace_sampling,
                collector: a.trace_collector.clone(),
                format: a.trace_format,
                mesh_id: a.mesh_id.clone(),
            },
            proxy: a.proxy_ip.map(|ip| ProxyConfig {
                ip,
                netns: a.proxy_netns.clone(),
                ports: a.proxy_ports,
                http_no_endpoint_503: a.http_no_endpoint_503,
                own_http1: a.proxy_own_http1,
                fail_closed: meshpath_compile::steer::FailClosed::from_names(&a.proxy_fail_closed),
                drain_timeout: std::time::Duration::from_millis(a.drain_timeout_ms),
            }),
            compile: CompileOptions {
                default_lb_policy: match a.default_lb_policy {
                    PolicyArg::Random => LbPolicy::Random,
                    PolicyArg::RoundRobin => LbPolicy::RoundRobin,
                },
                service_cidr: a.service_cidr,
                node_name: a.node_name.clone(),
                max_frontends: a.max_frontends,
                max_backends: a.max_backends,
                max_service_entries: a.max_service_entries,
            },
        }
    }
}

/// `IP` (port 53) or `IP:PORT`.
pub fn parse_resolver(s: &str) -> Result<SocketAddrV4, String> {
    s.parse::<SocketAddrV4>()
        .or_else(|_| s.parse::<Ipv4Addr>().map(|ip| SocketAddrV4::new(ip, 53)))
        .map_err(|_| format!("`{s}` is not an IPv4 address or IPv4:port"))
}

/// Parses the command line (pure apart from reading the environment variables clap knows).
pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// `15100-15999` → (15100, 15999).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 15100-15999"))?;
    let a: u16 = a.parse().map_err(|e| format!("{s:?}: first port: {e}"))?;
    let b: u16 = b.parse().map_err(|e| format!("{s:?}: last port: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 1 <= FIRST <= LAST"));
    }
    Ok((a, b))
}

/// `10.96.0.0/12` → (10.96.0.0, 12).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX, e.g. 10.96.0.0/12"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: address: {e}"))?;
    let len: u8 = len
        .parse()
        .map_err(|e| format!("{s:?}: prefix length: {e}"))?;
    if !(8..=30).contains(&len) {
        return Err(format!("{s:?}: prefix length must be between 8 and 30"));
    }
    Ok((ip, len))
}

#[cfg(test)]
mod tests;

/// `--socket-redirect`: which sockets same-node redirection applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketRedirectArg {
    /// Not attached.
    #[value(alias = "false")]
    Off,
    /// The node proxy's sockets and opted-in pods' only.
    OptIn,
    /// Every socket of the managed cgroups.
    #[value(alias = "true")]
    All,
}

impl From<SocketRedirectArg> for meshpath_datapath::RedirectScope {
    fn from(a: SocketRedirectArg) -> Self {
        match a {
            SocketRedirectArg::Off => Self::Off,
            SocketRedirectArg::OptIn => Self::OptIn,
            SocketRedirectArg::All => Self::All,
        }
    }
}
