package devserver

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// freePort returns a port p such that p and p+1000 (the UI) are free.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if p > 64000 {
			continue
		}
		if ui, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1000)); err == nil {
			ui.Close()
			return p
		}
	}
	t.Fatal("no free port pair")
	return 0
}

func stopAll(t *testing.T, dir string) {
	t.Cleanup(func() {
		if _, err := Stop(dir); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
}

func TestEnsureTemporal(t *testing.T) {
	if _, err := TemporalBinary(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	stopAll(t, dir)
	hostport := "127.0.0.1:" + strconv.Itoa(freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	started, err := EnsureTemporal(ctx, hostport, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !started {
		t.Fatal("started = false on a free port")
	}
	pid, ok := PID(dir, TemporalPID)
	if !ok {
		t.Fatal("no live pid in temporal.pid")
	}
	if _, err := os.Stat(filepath.Join(dir, TemporalDB)); err != nil {
		t.Errorf("no SQLite file: %v", err)
	}
	// On a local disk the database is write-ahead logged (sqlitePragmas):
	// SQLite keeps the log beside it while the server runs.
	if networkFS(dir) {
		t.Logf("%s is on a network filesystem: SQLite's defaults", dir)
	} else if _, err := os.Stat(filepath.Join(dir, TemporalDB+"-wal")); err != nil {
		t.Errorf("no write-ahead log beside %s: %v", TemporalDB, err)
	}
	if err := checkHealth(ctx, hostport); err != nil {
		t.Fatalf("health after EnsureTemporal: %v", err)
	}

	started, err = EnsureTemporal(ctx, hostport, dir)
	if err != nil || started {
		t.Fatalf("second EnsureTemporal = %v, %v; want false, nil", started, err)
	}
	// The server is this state dir's at its own address, not at another
	// (where another's may answer).
	_, port, _ := net.SplitHostPort(hostport)
	if !Serves(dir, hostport) || !Serves(dir, "localhost:"+port) || Serves(dir, "127.0.0.1:1") || Serves(t.TempDir(), hostport) {
		t.Errorf("Serves: %v at %s, %v at localhost:%s, %v at another port, %v for another state dir; want true, true, false, false",
			Serves(dir, hostport), hostport, Serves(dir, "localhost:"+port), port, Serves(dir, "127.0.0.1:1"), Serves(t.TempDir(), hostport))
	}

	lines, err := Stop(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], strconv.Itoa(pid)) {
		t.Errorf("Stop = %q", lines)
	}
	if alive(pid) {
		t.Errorf("pid %d alive after Stop", pid)
	}
	if Reachable(hostport) {
		t.Errorf("%s still reachable after Stop", hostport)
	}
}

func TestEnsureTemporalMissingBinary(t *testing.T) {
	t.Setenv("DCD_TEMPORAL", filepath.Join(t.TempDir(), "nope"))
	_, err := EnsureTemporal(context.Background(), "127.0.0.1:"+strconv.Itoa(freePort(t)), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "make setup") {
		t.Fatalf("err = %v, want one naming make setup", err)
	}
}

func TestEnsureWorker(t *testing.T) {
	sleep, err := lookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	stopAll(t, dir)
	ctx := context.Background()
	// The worker's settings as this test's shell may have them: unset.
	for _, name := range []string{"DCD_EP", "DCD_ORT_LIB", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "DCD_MNIST_DIR"} {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	defaults := map[string]string{"DCD_EP": "cpu", "DCD_ORT_LIB": "/lib/ort.so"}

	started, err := EnsureWorker(ctx, sleep, []string{"300"}, defaults, dir)
	if err != nil || !started {
		t.Fatalf("EnsureWorker = %v, %v; want true, nil", started, err)
	}
	pid, ok := PID(dir, WorkerPID)
	if !ok {
		t.Fatal("no live pid in worker.pid")
	}
	started, err = EnsureWorker(ctx, sleep, []string{"300"}, defaults, dir)
	if err != nil || started {
		t.Fatalf("second EnsureWorker = %v, %v; want false, nil", started, err)
	}
	if _, err := EnsureWorker(ctx, sleep, []string{"301"}, defaults, dir); err == nil || !strings.Contains(err.Error(), "other arguments") {
		t.Fatalf("EnsureWorker with other args: err = %v", err)
	}
	// The check a worker about to be rebuilt gets before it is stopped:
	// other args, or another storage environment, would take the new
	// build elsewhere; its settings the new build takes from this shell.
	if err := CheckWorker([]string{"301"}, dir); err == nil || !strings.Contains(err.Error(), "other arguments") {
		t.Fatalf("CheckWorker with other args: err = %v", err)
	}
	if WorkerOutdated(dir) {
		t.Fatal("a worker whose binary is in place is outdated")
	}
	// The state dir as the starter names it, relative (.dcd).
	t.Chdir(filepath.Dir(dir))
	if err := CheckWorker([]string{"301"}, filepath.Base(dir)); err == nil || !strings.Contains(err.Error(), "other arguments") {
		t.Fatalf("CheckWorker of a relative state dir, with other args: err = %v", err)
	}
	if err := CheckWorker([]string{"300"}, dir); err != nil {
		t.Fatalf("CheckWorker with its own args: %v", err)
	}
	if err := CheckWorker([]string{"301"}, t.TempDir()); err != nil {
		t.Fatalf("CheckWorker where no worker runs: %v", err)
	}
	t.Setenv("DCD_EP", "cuda")
	if err := CheckWorker([]string{"300"}, dir); err != nil {
		t.Fatalf("CheckWorker with another DCD_EP: %v, want none (the new build takes it)", err)
	}
	t.Setenv("AWS_ENDPOINT_URL", "http://elsewhere:9000")
	if err := CheckWorker([]string{"300"}, dir); err == nil || !strings.Contains(err.Error(), "AWS_ENDPOINT_URL") || strings.Contains(err.Error(), "DCD_EP") {
		t.Fatalf("CheckWorker with another S3 endpoint: %v, want one naming it alone", err)
	}
	os.Unsetenv("DCD_EP")
	os.Unsetenv("AWS_ENDPOINT_URL")
	// And one started with a storage variable this shell lacks: the new
	// build would lose it (its endpoint, its profile).
	t.Setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
	if _, err := Stop(dir); err != nil {
		t.Fatal(err)
	}
	if started, err := EnsureWorker(ctx, sleep, []string{"300"}, defaults, dir); err != nil || !started {
		t.Fatalf("EnsureWorker with STORAGE_EMULATOR_HOST = %v, %v", started, err)
	}
	os.Unsetenv("STORAGE_EMULATOR_HOST")
	if err := CheckWorker([]string{"300"}, dir); err == nil || !strings.Contains(err.Error(), "STORAGE_EMULATOR_HOST") {
		t.Fatalf("CheckWorker of a worker with a storage variable this shell lacks: %v, want one naming it", err)
	}
	pid, _ = PID(dir, WorkerPID)
	// A setting or credential this shell sets and the worker lacks or holds
	// otherwise: the worker would not do as asked. Named, not shown.
	t.Setenv("DCD_EP", "cuda")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
	t.Setenv("DCD_MNIST_DIR", "/elsewhere") // the starter's, not the worker's
	_, err = EnsureWorker(ctx, sleep, []string{"300"}, defaults, dir)
	if err == nil || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY, DCD_EP") || strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "DCD_MNIST_DIR") {
		t.Fatalf("EnsureWorker with another environment: err = %v, want one naming AWS_SECRET_ACCESS_KEY, DCD_EP alone, without values", err)
	}
	os.Unsetenv("DCD_EP")
	os.Unsetenv("AWS_SECRET_ACCESS_KEY")
	if started, err := EnsureWorker(ctx, sleep, []string{"300"}, defaults, dir); err != nil || started {
		t.Fatalf("EnsureWorker with the worker's settings unset = %v, %v; want false, nil (nothing asked of it)", started, err)
	}
	// Set to what the worker takes when they are unset (make's exports,
	// a path spelt with "//"), or read by the AWS CLI alone.
	t.Setenv("DCD_EP", "cpu")
	t.Setenv("DCD_ORT_LIB", "/lib//ort.so")
	t.Setenv("AWS_PAGER", "less")
	if started, err := EnsureWorker(ctx, sleep, []string{"300"}, defaults, dir); err != nil || started {
		t.Fatalf("EnsureWorker with the worker's settings set to its defaults = %v, %v; want false, nil", started, err)
	}
	if _, err := Stop(dir); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("pid %d alive after Stop", pid)
	}
	if _, ok := PID(dir, WorkerPID); ok {
		t.Error("pid file still names a live process")
	}
}

// Two holders of one state dir's start lock take turns; a wait for it ends
// with its context.
func TestLockTakesTurns(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	lock := filepath.Join(dir, StartLock)
	unlock, err := Lock(ctx, lock, nil)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := Lock(short, lock, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second Lock while the first holds it: %v, want it to wait until its context ends", err)
	}
	got := make(chan error, 1)
	said := make(chan bool, 2)
	go func() {
		unlock, err := Lock(ctx, lock, func() { said <- true })
		if err == nil {
			unlock()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a second Lock returned %v while the first holds it", err)
	case <-said: // after a second of waiting, said once
	case <-time.After(10 * time.Second):
		t.Fatal("a second Lock waited 10 s without saying so")
	}
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a second Lock still waits after the first let go")
	}
}

func TestEnsureWorkerExitsAtOnce(t *testing.T) {
	sh, err := lookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	_, err = EnsureWorker(context.Background(), sh, []string{"-c", "echo no onnx runtime >&2; exit 1"}, nil, dir)
	if err == nil || !strings.Contains(err.Error(), "no onnx runtime") {
		t.Fatalf("err = %v, want the log's last line", err)
	}
	if _, err := os.Stat(filepath.Join(dir, WorkerPID)); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
}

// A stale pid file naming some other live process is not ours: Stop must
// leave that process alone.
func TestStopIgnoresForeignPID(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, WorkerPID), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lines, err := Stop(dir)
	if err != nil || len(lines) != 0 {
		t.Fatalf("Stop = %q, %v", lines, err)
	}
}

func TestUIURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:7233": "http://127.0.0.1:8233",
		"localhost:7000": "http://127.0.0.1:8000",
		"temporal:7233":  "http://temporal:8233",
		"garbage":        "http://127.0.0.1:8233",
	} {
		if got := UIURL(in); got != want {
			t.Errorf("UIURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func lookPath(name string) (string, error) {
	for _, d := range []string{"/bin", "/usr/bin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}

// A dev server of this state folder running at another address is not
// joined by a second one on the same database.
func TestEnsureTemporalRefusesASecondServer(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, TemporalPID)
	cmd := exec.Command("sleep", "60") // stands for the server: it carries the pid file's marker
	cmd.Env = append(os.Environ(), markerEnv+"="+pidFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Start returns while the kernel may still be setting up the new
	// program's environment (/proc/PID/environ reads empty): a server
	// started earlier is long past that.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := running(pidFile); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stand-in's environment never showed its marker")
		}
	}
	t.Setenv("DCD_TEMPORAL", "/bin/false") // must not be started
	hostport := "127.0.0.1:" + strconv.Itoa(freePort(t))
	started, err := EnsureTemporal(context.Background(), hostport, dir)
	if started || err == nil || !strings.Contains(err.Error(), "dev -stop") {
		t.Errorf("EnsureTemporal = %v, %v; want a refusal naming starter dev -stop", started, err)
	}
}

// A server started by StartTemporal ends with the process that started
// it, killed (a bench interrupted, a test binary timed out), instead of
// running on. The process here is this test binary run again.
func TestStartTemporalEndsWithItsProcess(t *testing.T) {
	if dir := os.Getenv("DCD_TEST_START_TEMPORAL"); dir != "" {
		if err := StartTemporal(context.Background(), os.Getenv("DCD_TEST_HOSTPORT"), dir); err != nil {
			t.Fatal(err)
		}
		os.Stdout.WriteString("started\n")
		time.Sleep(time.Hour)
	}
	if _, err := TemporalBinary(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	stopAll(t, dir)
	cmd := exec.Command(os.Args[0], "-test.run=^TestStartTemporalEndsWithItsProcess$")
	cmd.Env = append(os.Environ(), "DCD_TEST_START_TEMPORAL="+dir, "DCD_TEST_HOSTPORT=127.0.0.1:"+strconv.Itoa(freePort(t)))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 8)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "started\n" {
		cmd.Process.Kill()
		t.Fatalf("the helper did not start a server: %q, %v", line, err)
	}
	pid, ok := PID(dir, TemporalPID)
	if !ok {
		t.Fatal("no server pid")
	}
	cmd.Process.Kill()
	cmd.Wait()
	for deadline := time.Now().Add(10 * time.Second); alive(pid); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server (pid %d) runs on after its process was killed", pid)
		}
	}
}

// A process started attached shares this one's process group, so killing
// it is not killing a group of its own: kill ends it and returns, for
// every kind of start.
func TestKillEnds(t *testing.T) {
	for _, detach := range []bool{false, true} {
		p, err := start("sleep", []string{"60"}, t.TempDir(), "sleep.log", "sleep.pid", detach)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { p.kill(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			t.Fatalf("kill of a process started with detach %v did not return", detach)
		}
	}
}

// A worker whose binary a new build was renamed over is outdated: a start
// refused or interrupted after the rename leaves it running so.
func TestWorkerOutdated(t *testing.T) {
	sleep, err := lookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	stopAll(t, dir)
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "worker")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureWorker(context.Background(), bin, []string{"300"}, nil, dir); err != nil {
		if strings.Contains(err.Error(), "exited at once") {
			t.Skipf("a copy of %s does not run under another name (a multi-call binary): %v", sleep, err)
		}
		t.Fatal(err)
	}
	if WorkerOutdated(dir) {
		t.Fatal("outdated with its binary in place")
	}
	next := filepath.Join(dir, "worker.next")
	if err := os.WriteFile(next, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, bin); err != nil {
		t.Fatal(err)
	}
	if !WorkerOutdated(dir) {
		t.Error("not outdated with a new build renamed over its binary")
	}
}

// The starter finds the dev worker's bucket on its command line, but only
// for a worker of the server and namespace it talks to.
func TestStorageOf(t *testing.T) {
	cmd := []string{"/x/.dcd/bin/worker", "-address", "127.0.0.1:7233", "-namespace", "default", "-storage", "file:///data/b"}
	if s, ok := storageOf(cmd, "127.0.0.1:7233", "default"); !ok || s != "file:///data/b" {
		t.Errorf("storageOf = %q, %v; want file:///data/b", s, ok)
	}
	if _, ok := storageOf(cmd, "127.0.0.1:7311", "default"); ok {
		t.Error("the storage of a worker of another server taken")
	}
	if _, ok := storageOf(cmd, "127.0.0.1:7233", "other"); ok {
		t.Error("the storage of a worker of another namespace taken")
	}
	if _, ok := storageOf(cmd[:5], "127.0.0.1:7233", "default"); ok {
		t.Error("a storage taken from a command line without one")
	}
}
