// Package devserver starts and stops the local processes of a development
// setup: a Temporal dev server and a DCD worker. `starter dev`, `starter
// demo` and the integration tests share it.
//
// Both processes run detached (their own session), so they outlive the
// command that started them. Each keeps its state in one folder, the state
// dir: temporal.db, temporal.log, temporal.pid, worker.log and worker.pid.
// Stop ends what the pid files name.
//
// # Errors
//
// TemporalBinary fails when the Temporal CLI is not installed. EnsureTemporal
// and EnsureWorker fail when the process cannot start, exits at once (the
// error quotes the end of its log) or, for Temporal, is not healthy within
// 60 s. EnsureWorker also fails when a worker from the pid file is running
// with other arguments, or a setting or credential in its environment
// that this one sets otherwise, since it would silently use another
// storage, server or provider.
package devserver

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"

	"dcd/internal/redact"
	"dcd/internal/toolcache"
)

// Names of the files in the state dir.
const (
	TemporalDB  = "temporal.db"
	TemporalLog = "temporal.log"
	TemporalPID = "temporal.pid"
	WorkerLog   = "worker.log"
	WorkerPID   = "worker.pid"
	StartLock   = "start.lock"
)

// Lock takes the lock file at path, waiting while another process holds
// it, until unlock; waiting, when not nil, is called once a wait has
// lasted a second, to say so. Starters that bring up one state dir's
// server and worker at once (two `starter demo` on a fresh checkout) take
// turns on its StartLock: the second finds what the first started, where
// both would have started a server on one database and one pid file, the
// survivor's lost to `dev -stop`. The lock is the kernel's (flock), let go
// when its holder ends.
func Lock(ctx context.Context, path string, waiting func()) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}
	said := time.After(time.Second)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // (closing lets go)
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("devserver: lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("devserver: waiting for another process's lock %s: %w", f.Name(), ctx.Err())
		case <-said:
			if waiting != nil {
				waiting()
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// healthTimeout bounds the wait for a fresh Temporal server.
const healthTimeout = 60 * time.Second

// markerEnv is set in the environment of every process started here, to
// the pid file's path, so that Stop never signals an unrelated process that
// happens to reuse a stale pid.
const markerEnv = "DCD_DEVSERVER_PIDFILE"

// TemporalBinary returns the Temporal CLI's path: env DCD_TEMPORAL, else
// the setup's folder's bin/temporal (toolcache).
func TemporalBinary() (string, error) { return installed("DCD_TEMPORAL", "temporal", "temporal CLI") }

// installed is the path of a program scripts/setup.sh installs: env
// names it, else the setup's folder's bin/<name> (toolcache). what names
// it in errors.
func installed(env, name, what string) (string, error) {
	p := os.Getenv(env)
	if p == "" {
		p = toolcache.Path("bin", name)
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("devserver: %s not found at %s: run `make setup`, or set %s to its path", what, p, env)
	}
	return p, nil
}

// Reachable reports whether something accepts TCP connections at hostport.
func Reachable(hostport string) bool {
	conn, err := net.DialTimeout("tcp", hostport, 500*time.Millisecond)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// UIURL is the Web UI of the dev server whose frontend is at hostport: same
// host, port + 1000 (the dev server's default, which EnsureTemporal keeps).
func UIURL(hostport string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "http://127.0.0.1:8233"
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "http://127.0.0.1:8233"
	}
	if host == "" || host == "localhost" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(p+1000))
}

// DynamicConfig is the dev server's dynamic configuration, and that of
// docker-compose.yml's server (configs/temporal-dynamic.yaml, kept equal by
// a test). Each step of a pass is a hop through the server, so these are
// what a hop costs (`starter bench`, orchestration_new):
//   - One partition per task queue: with a handful of pollers, the default
//     four leave a task on a partition no poller is waiting on, to be
//     forwarded, which made a pool shard's activity about 40% slower end to
//     end.
//   - A history shard reads its transfer queue (the tasks that hand a
//     workflow or activity task to matching) at most 20 times a second by
//     default, and the dev server has one shard: every step of every
//     workflow waited up to 50 ms for it. 12.5 → 3 ms a new shard.
//   - Eager activities: a workflow task that schedules an activity on its
//     own task queue gets it back in the reply when its worker has a free
//     slot, skipping matching (about 1 ms a step).
//
// A production cluster wants the same keys (configs/temporal-dynamic.yaml
// says which can be limited to DCD's task queues or namespace). Eager
// activities favour the worker that runs a workflow, while it has slots
// free: a step's activity runs where its workflow does unless that worker
// is busy, and only then spreads to the others.
var DynamicConfig = []string{
	"--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
	"--dynamic-config-value", "matching.numTaskqueueWritePartitions=1",
	"--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
	"--dynamic-config-value", "system.enableActivityEagerExecution=true",
}

// sqlitePragmas make the dev server's database write-ahead logged and
// synced at checkpoints rather than at every commit. Each step of a pass
// is a few commits, and their fsyncs were most of the dev server's latency
// between two steps: the recurring pass of 250k images spent 440–500 ms
// between its activities with them, 250–265 ms without (`starter bench`,
// pass_cached_250k_orchestration). A killed server loses nothing; a power
// loss or kernel crash may lose its last commits, never its consistency.
// SQLite's WAL mode does not promise to work on a network filesystem, so a
// state folder there (an NFS home) keeps SQLite's defaults.
var sqlitePragmas = []string{
	"--sqlite-pragma", "journal_mode=wal",
	"--sqlite-pragma", "synchronous=normal",
}

// EnsureTemporal starts a Temporal dev server on hostport, with its SQLite
// file and log in stateDir, unless something answers there already; either
// way it waits until the frontend is healthy. It reports whether it started
// one.
// Namespaces other than "default" are created with a server it starts.
func EnsureTemporal(ctx context.Context, hostport, stateDir string, namespaces ...string) (bool, error) {
	return ensureTemporal(ctx, hostport, stateDir, true, namespaces...)
}

// StartTemporal starts a dev server as EnsureTemporal does, but one of this
// process: it is killed when this process ends, however it ends (a bench
// interrupted, a test binary timed out), instead of running on.
func StartTemporal(ctx context.Context, hostport, stateDir string) error {
	_, err := ensureTemporal(ctx, hostport, stateDir, false)
	return err
}

func ensureTemporal(ctx context.Context, hostport, stateDir string, detach bool, namespaces ...string) (bool, error) {
	if Reachable(hostport) {
		return false, waitHealthy(ctx, hostport, healthTimeout, nil)
	}
	bin, err := TemporalBinary()
	if err != nil {
		return false, err
	}
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return false, fmt.Errorf("devserver: address %q: %w", hostport, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535-1000 {
		return false, fmt.Errorf("devserver: address %q: port must be a number below %d", hostport, 65535-1000)
	}
	host = devHost(host)
	stateDir, err = filepath.Abs(stateDir)
	if err != nil {
		return false, fmt.Errorf("devserver: %w", err)
	}
	if pid, ok := running(filepath.Join(stateDir, TemporalPID)); ok {
		// A second server on the same database, and the first one's pid
		// file overwritten: it would run on with nothing to stop it.
		return false, fmt.Errorf("devserver: the Temporal dev server of %s (pid %d) is running, not at %s: use its address, or stop it first (`starter dev -stop`)", stateDir, pid, hostport)
	}
	// The HTTP API and metrics ports are the dev server's to pick, at
	// random, before it binds the frontend's: it once picked the
	// frontend's own port, free until then, and failed to start. They are
	// picked here, apart from it and the UI's.
	extra, err := freePorts(host, 2, port, port+1000)
	if err != nil {
		return false, fmt.Errorf("devserver: %w", err)
	}
	args := []string{"server", "start-dev",
		"--ip", host, "--port", strconv.Itoa(port), "--ui-port", strconv.Itoa(port + 1000),
		"--http-port", strconv.Itoa(extra[0]), "--metrics-port", strconv.Itoa(extra[1]),
		"--db-filename", filepath.Join(stateDir, TemporalDB), "--log-level", "warn"}
	for _, ns := range namespaces {
		if ns != "" && ns != "default" {
			args = append(args, "--namespace", ns)
		}
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return false, fmt.Errorf("devserver: %w", err)
	}
	if !networkFS(stateDir) {
		args = append(args, sqlitePragmas...)
	}
	args = append(args, DynamicConfig...)
	p, err := start(bin, args, stateDir, TemporalLog, TemporalPID, detach)
	if err != nil {
		return false, err
	}
	if err := waitHealthy(ctx, hostport, healthTimeout, p.exited); err != nil {
		p.kill()
		return false, fmt.Errorf("%w\n%s", err, Tail(p.log))
	}
	return true, nil
}

// freePorts returns n distinct ports free on host now, none of avoid.
func freePorts(host string, n int, avoid ...int) ([]int, error) {
	var ports []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, err
		}
		held = append(held, l) // held until all are picked, so they differ
		if p := l.Addr().(*net.TCPAddr).Port; !slices.Contains(avoid, p) {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// waitHealthy polls the frontend at hostport until its health check passes,
// the process behind exited is gone, ctx ends or timeout passes.
func waitHealthy(ctx context.Context, hostport string, timeout time.Duration, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if Reachable(hostport) {
			last = checkHealth(ctx, hostport)
			if last == nil {
				return nil
			}
		} else {
			last = fmt.Errorf("nothing listens at %s yet", hostport)
		}
		select {
		case <-exited:
			return fmt.Errorf("devserver: temporal server exited before it was healthy")
		case <-ctx.Done():
			if context.Cause(ctx) != context.DeadlineExceeded {
				return fmt.Errorf("devserver: interrupted waiting for temporal at %s: %w", hostport, ctx.Err())
			}
			return fmt.Errorf("devserver: temporal at %s not healthy after %s: %v", hostport, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func checkHealth(ctx context.Context, hostport string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{HostPort: hostport, Logger: QuietLogger()})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.CheckHealth(ctx, &client.CheckHealthRequest{})
	return err
}

// QuietLogger is a Temporal SDK logger that only reports warnings and
// errors, on stderr.
func QuietLogger() tlog.Logger {
	return tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
}

// EnsureWorker starts workerBin with args, its log in stateDir/worker.log
// and its pid in stateDir/worker.pid, unless the worker of that pid file is
// alive. The worker inherits this process's environment, storage
// credentials included; defaults are the values it takes for the
// variables left unset (envDiffers). It reports whether it started one.
func EnsureWorker(ctx context.Context, workerBin string, args []string, defaults map[string]string, stateDir string) (bool, error) {
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return false, fmt.Errorf("devserver: %w", err)
	}
	if bin, err := filepath.Abs(workerBin); err == nil {
		workerBin = bin
	}
	pidFile := filepath.Join(stateDir, WorkerPID)
	if pid, ok := running(pidFile); ok {
		return false, workerDiffers(pid, args, func(have, want []string) []string { return envDiffers(have, want, defaults) })
	}
	p, err := start(workerBin, args, stateDir, WorkerLog, WorkerPID, true)
	if err != nil {
		return false, err
	}
	// A worker that cannot start (no ONNX Runtime, no server, bad storage)
	// exits within a moment: report it here rather than leave a dead pid.
	select {
	case <-p.exited:
		os.Remove(pidFile)
		return false, fmt.Errorf("devserver: worker exited at once:\n%s", Tail(p.log))
	case <-time.After(2 * time.Second):
		return true, nil
	case <-ctx.Done():
		return true, nil
	}
}

// CheckWorker refuses the worker running from stateDir, if one does, that
// a new build of it started in its place with args and this process's
// environment would take elsewhere: other args (another bucket, namespace
// or server), or another storage environment (StorageEnv: credentials,
// endpoints). Its other settings may differ (DCD_ORT_LIB after a checkout
// moved to another ONNX Runtime): the new build takes this shell's.
func CheckWorker(args []string, stateDir string) error {
	pid, ok := PID(stateDir, WorkerPID) // (the pid file's path made absolute, as the worker's marker has it)
	if !ok {
		return nil
	}
	return workerDiffers(pid, args, storageDiffers)
}

// WorkerStorage is the bucket of the worker running from stateDir (its
// -storage), when it runs against the server at address in namespace.
func WorkerStorage(stateDir, address, namespace string) (string, bool) {
	pid, ok := PID(stateDir, WorkerPID)
	if !ok {
		return "", false
	}
	cmd, err := cmdline(pid)
	if err != nil {
		return "", false
	}
	return storageOf(cmd, address, namespace)
}

// storageOf is the -storage of a worker's command line cmd, when its
// -address and -namespace are address and namespace.
func storageOf(cmd []string, address, namespace string) (string, bool) {
	flags := map[string]string{}
	for i := 1; i+1 < len(cmd); i += 2 { // as ensureDev starts it: -name value pairs
		flags[cmd[i]] = cmd[i+1]
	}
	storage, ok := flags["-storage"]
	return storage, ok && flags["-address"] == address && flags["-namespace"] == namespace
}

// WorkerOutdated says whether the worker running from stateDir runs a
// binary since replaced (a new build renamed over it, whose old file is
// then deleted): one a refused or interrupted start left running.
func WorkerOutdated(stateDir string) bool {
	pid, ok := PID(stateDir, WorkerPID)
	if !ok {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.HasSuffix(exe, " (deleted)")
}

// workerDiffers refuses the worker of pid when it runs with other args
// than these, or with an environment (have) that differs from this
// process's (want) in the variables differs names.
func workerDiffers(pid int, args []string, differs func(have, want []string) []string) error {
	if cmd, err := cmdline(pid); err == nil && !slices.Equal(cmd[1:], args) {
		return fmt.Errorf("devserver: a worker (pid %d) is running with other arguments %s, not %s: stop it with `starter dev -stop`", pid, redact.Text(fmt.Sprintf("%q", cmd[1:])), redact.Text(fmt.Sprintf("%q", args)))
	}
	if env, err := environ(pid); err == nil {
		if names := differs(env, os.Environ()); len(names) > 0 {
			// Names only: the values may be credentials.
			return fmt.Errorf("devserver: a worker (pid %d) is running with another %s than this shell sets: stop it with `starter dev -stop` for one with this environment", pid, strings.Join(names, ", "))
		}
	}
	return nil
}

// WorkerEnv says whether a worker reads the environment variable name:
// its settings (DCD_EP, DCD_THREADS, …, as worker -h lists them), its
// stores' credentials and endpoints (the cloud SDKs' AWS_*, AZURE_*,
// GOOGLE_*, less the AWS CLI's own), ONNX Runtime's and Go's runtime's.
func WorkerEnv(name string) bool {
	switch name {
	case "DCD_ORT_LIB", "DCD_EP", "DCD_QUEUES", "DCD_THREADS", "DCD_CONCURRENCY", "DCD_DECODERS", "DCD_READERS",
		"DCD_CPUPROFILE", "DCD_ACTIVITY_SPANS",
		"GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
		"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
		"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER":
		return true
	}
	return StorageEnv(name)
}

// StorageEnv says whether a worker's stores read the environment variable
// name: the cloud SDKs' credentials and endpoints (AWS_*, AZURE_*,
// GOOGLE_*, less the AWS CLI's own) and STORAGE_EMULATOR_HOST.
func StorageEnv(name string) bool {
	switch name {
	case "STORAGE_EMULATOR_HOST":
		return true
	case "AWS_PAGER", "AWS_DEFAULT_OUTPUT", "AWS_CLI_AUTO_PROMPT", "AWS_CLI_FILE_ENCODING":
		return false
	}
	for _, prefix := range []string{"AWS_", "AZURE_", "GOOGLE_"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// envDiffers names the worker variables (WorkerEnv) that want sets and
// have holds another value of, sorted; a variable unset or empty is its
// value in defaults, the worker's own (DCD_EP=cpu against none is no
// difference). What have sets and want does not is no difference either:
// a shell without the settings a worker was started with (make's, say)
// asks nothing of it.
func envDiffers(have, want []string, defaults map[string]string) []string {
	held := vars(have)
	value := func(k, v string) string {
		v = cmp.Or(v, defaults[k])
		if k == "DCD_ORT_LIB" && v != "" {
			v = filepath.Clean(v) // make's $(CACHE)/lib/… may hold a "//"
		}
		return v
	}
	var names []string
	for _, kv := range want {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !WorkerEnv(k) {
			continue
		}
		if value(k, held[k]) != value(k, v) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// storageDiffers names the storage variables (StorageEnv) that have and
// want set otherwise, sorted; unset is empty. Both ways: a worker
// replaced by one with want would lose what only have sets (an endpoint,
// a profile) as much as it would gain what only want sets.
func storageDiffers(have, want []string) []string {
	h, w := vars(have), vars(want)
	var names []string
	for k := range h {
		if StorageEnv(k) && h[k] != w[k] {
			names = append(names, k)
		}
	}
	for k := range w {
		if StorageEnv(k) && h[k] != w[k] {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// vars maps an environment's names to their values.
func vars(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// proc is a process started here.
type proc struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// kill ends the process: a detached one with its session's process group,
// an attached one alone, as it shares this process's group (a kill of
// that group would fail, and the wait for its exit never end).
func (p *proc) kill() {
	if p.cmd.SysProcAttr.Setsid {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	} else {
		p.cmd.Process.Kill()
	}
	<-p.exited
}

// start runs bin, appending its output to stateDir/logName and writing its
// pid to stateDir/pidName: detached, in its own session, or else killed
// when this process ends.
func start(bin string, args []string, stateDir, logName, pidName string, detach bool) (*proc, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}
	logPath := filepath.Join(stateDir, logName)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s: %s %s\n", time.Now().Format(time.RFC3339), bin, redact.Text(strings.Join(args, " ")))
	pidPath := filepath.Join(stateDir, pidName)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), markerEnv+"="+pidPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if !detach {
		cmd.SysProcAttr = Attached()
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("devserver: start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		cmd.Wait() // reaps it if it dies while this process lives
		close(p.exited)
	}()
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		p.kill()
		return nil, fmt.Errorf("devserver: %w", err)
	}
	return p, nil
}

// Attached is the SysProcAttr of a child that must not outlive this
// process: SIGKILL when it ends. (Linux sends it when the thread that
// started the child ends; Go's threads live as long as the process unless
// a goroutine locked to one exits, which none starting children does.)
func Attached() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// Stop ends the worker and the Temporal server named by the pid files in
// stateDir (SIGTERM to their process group, SIGKILL after the grace each
// has: the worker's WorkerStopGrace, the server's 10 s) and removes the pid
// files. It returns one line per process it stopped.
func Stop(stateDir string) ([]string, error) {
	var done []string
	var errs []error
	for _, name := range []string{WorkerPID, TemporalPID} {
		line, err := stop(stateDir, name)
		if line != "" {
			done = append(done, line)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return done, errors.Join(errs...)
}

// StopWorker is Stop for the worker alone.
func StopWorker(stateDir string) (string, error) { return stop(stateDir, WorkerPID) }

// stop ends the process of the pid file name in stateDir, if it runs, and
// says so.
func stop(stateDir, name string) (string, error) {
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return "", fmt.Errorf("devserver: %w", err)
	}
	pidFile := filepath.Join(stateDir, name)
	pid, ok := running(pidFile)
	if !ok {
		os.Remove(pidFile)
		return "", nil
	}
	grace := 10 * time.Second
	if name == WorkerPID {
		grace = WorkerStopGrace
	}
	if err := terminate(pid, grace); err != nil {
		return "", fmt.Errorf("devserver: stop pid %d (%s): %w", pid, name, err)
	}
	os.Remove(pidFile)
	return fmt.Sprintf("stopped %s (pid %d)", strings.TrimSuffix(name, ".pid"), pid), nil
}

// WorkerStopGrace is how long Stop lets a worker drain after SIGTERM: more
// than the 30 s its embedding and search activities get to finish a batch
// and commit it, which a SIGKILL at 10 s threw away, and the 15 s it then
// waits for external trainers to stop and flush their logs.
const WorkerStopGrace = 50 * time.Second

func terminate(pid int, grace time.Duration) error {
	if err := syscall.Kill(-pid, syscall.SIGTERM); err != nil {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
	for range 50 {
		if !alive(pid) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("still alive after SIGKILL")
}

// PID returns the pid recorded in stateDir's pid file name (TemporalPID,
// WorkerPID) when that process is alive.
func PID(stateDir, name string) (int, bool) {
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return 0, false
	}
	return running(filepath.Join(dir, name))
}

// Serves reports whether the Temporal dev server of stateDir runs and
// listens at hostport (its --ip, or every address, and --port, as
// ensureTemporal starts it):
// a server that answers there may be another's, with this checkout's own
// running at another address.
func Serves(stateDir, hostport string) bool {
	pid, ok := PID(stateDir, TemporalPID)
	if !ok {
		return false
	}
	cmd, err := cmdline(pid)
	if err != nil {
		return false
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	host = devHost(host)
	flag := func(name string) string {
		if i := slices.Index(cmd, name); i >= 0 && i+1 < len(cmd) {
			return cmd[i+1]
		}
		return ""
	}
	ip := flag("--ip")
	return (ip == host || ip == "0.0.0.0" || ip == "::") && flag("--port") == port // (any address: every host)
}

// devHost is the --ip a dev server is started with for host.
func devHost(host string) string {
	if host == "" || host == "localhost" {
		return "127.0.0.1"
	}
	return host
}

// running reads pidFile and reports whether its process is alive and was
// started by this package with that pid file.
func running(pidFile string) (int, bool) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !alive(pid) {
		return 0, false
	}
	env, err := environ(pid)
	if err != nil {
		// No /proc (not Linux): trust the pid file.
		_, statErr := os.Stat("/proc/self/environ")
		return pid, statErr != nil
	}
	if slices.Contains(env, markerEnv+"="+pidFile) {
		return pid, true
	}
	return 0, false
}

// alive reports whether pid is a live process (not a zombie).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !os.IsNotExist(err)
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z' && stat[i+2] != 'X'
	}
	return true
}

// cmdline returns a process's argv from /proc.
func cmdline(pid int) ([]string, error) {
	args, err := procList(pid, "cmdline")
	if err == nil && (len(args) == 0 || args[0] == "") {
		err = errors.New("empty cmdline")
	}
	return args, err
}

// environ is the environment process pid started with.
func environ(pid int) ([]string, error) { return procList(pid, "environ") }

// procList reads /proc/PID/file, a list of NUL-terminated strings.
func procList(pid int, file string) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}

// Tail returns the last lines of a log file, indented, for error messages.
func Tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "  " + path + ":\n    " + strings.Join(lines, "\n    ")
}
