package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"dcd/internal/devserver"
	"dcd/workflows"
)

// TestIdleQueuesNamed runs on a real dev server: a pass started with no
// worker at all is told no worker takes its workflow; one whose CPU
// activities run while an embedding waits is told only of the GPU queue.
// And `starter dev` does not add its worker where another's polls.
func TestIdleQueuesNamed(t *testing.T) {
	bin, err := devserver.TemporalBinary()
	if err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{
		ExistingPath: bin, LogLevel: "error", Stdout: io.Discard, Stderr: io.Discard,
		ClientOptions: &client.Options{Logger: devserver.QuietLogger()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	c, err := client.Dial(client.Options{HostPort: srv.FrontendHostPort(), Logger: devserver.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	path := filepath.Join(t.TempDir(), "pass.yaml")
	b, err := configYAML(testConfig(), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	e, out, errOut := testCLI()
	e.client = c
	if err := cmdRun(ctx, e, []string{"-config", path, "-id", "nobody"}); err != nil {
		t.Fatal(err)
	}
	want := "no worker has polled dcd-cpu lately: the pass waits until one does (bin/worker -queues cpu)"
	if !strings.Contains(errOut.String(), want) {
		t.Fatalf("run's warning:\n%s\nwant it to hold %q", errOut, want)
	}
	// Watched (run -wait), the pass no worker took says so too, though
	// it answers no progress query.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	e.watch(wctx, c, "nobody")
	cancel()
	if !strings.Contains(out.String(), want) {
		t.Errorf("watching it:\n%s\nwant a line holding %q", out, want)
	}
	c.TerminateWorkflow(ctx, "nobody", "", "test")
	// A report written before the pass's latest run started is said to
	// be an earlier run's; one written since is not.
	dir := t.TempDir()
	report := filepath.Join(dir, "runs", "nobody", "report.html")
	os.MkdirAll(filepath.Dir(report), 0o755)
	os.WriteFile(report, []byte("<!doctype html>"), 0o644)
	errOut.Reset()
	if err := cmdReport(ctx, e, []string{"-storage", "file://" + dir, "nobody"}); err != nil || strings.Contains(errOut.String(), "earlier run") {
		t.Errorf("a report written since the latest run started: %v, stderr:\n%s", err, errOut)
	}
	hourAgo := time.Now().Add(-time.Hour)
	os.Chtimes(report, hourAgo, hourAgo)
	if err := cmdReport(ctx, e, []string{"-storage", "file://" + dir, "nobody"}); err != nil || !strings.Contains(errOut.String(), "is terminated: this report, of ") {
		t.Errorf("the report of an earlier run: %v, stderr:\n%s", err, errOut)
	}
	if _, err := e.watch(ctx, c, "nobody"); err == nil || !strings.Contains(err.Error(), "pass nobody was terminated") {
		t.Errorf("watching a terminated pass: %v, want it said so, not 'failed'", err)
	}
	if err := e.checkServerShared(ctx, false); err != nil {
		t.Errorf("a server no worker polls, taken for a shared one: %v", err)
	}

	// `starter dev` with TEMPORAL_NAMESPACE set on its server started
	// without it registers it, once, for its worker to poll in; on a
	// server not its own it says the namespace is missing.
	ns, _, _ := testCLI()
	ns.g.address, ns.g.namespace = srv.FrontendHostPort(), "dcd-elsewhere"
	if err := ns.ensureNamespace(ctx, false); err == nil || !strings.Contains(err.Error(), `namespace "dcd-elsewhere" not found`) {
		t.Fatalf("a namespace missing on a server not started here: %v, want it said missing", err)
	}
	for range 2 {
		if err := ns.ensureNamespace(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Count(ns.stdout.(*bytes.Buffer).String(), "namespace dcd-elsewhere registered"); got != 1 {
		t.Errorf("registered %d times, want once:\n%s", got, ns.stdout)
	}
	nc, err := client.NewNamespaceClient(client.Options{HostPort: srv.FrontendHostPort(), Logger: devserver.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Describe(ctx, "dcd-elsewhere"); err != nil {
		t.Errorf("the namespace starter dev registered: %v", err)
	}

	// A pass's stand-in: a CPU activity that runs and an embedding that
	// waits for a GPU worker.
	old := waitedLong
	waitedLong = time.Second
	defer func() { waitedLong = old }()
	w := worker.New(c, workflows.CPUQueue, worker.Options{})
	w.RegisterWorkflowWithOptions(func(ctx workflow.Context) error {
		opts := workflow.ActivityOptions{StartToCloseTimeout: time.Minute}
		opts.TaskQueue = workflows.CPUQueue
		planned := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, opts), "Plan")
		opts.TaskQueue = workflows.GPUQueue
		embedded := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, opts), "EmbedShard")
		return errors.Join(planned.Get(ctx, nil), embedded.Get(ctx, nil))
	}, workflow.RegisterOptions{Name: "DebugPass"})
	w.RegisterActivityWithOptions(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, activity.RegisterOptions{Name: "Plan"})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "stuck", TaskQueue: workflows.CPUQueue}, "DebugPass"); err != nil {
		t.Fatal(err)
	}
	defer c.TerminateWorkflow(ctx, "stuck", "", "test")
	// Another checkout's worker polls this server: `starter dev` here
	// would add one with another bucket beside it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := e.checkServerShared(ctx, false)
		if err != nil && strings.Contains(err.Error(), "other workers poll its task queues") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dev beside another checkout's worker: %v, want a refusal", err)
		}
	}
	want = "no worker has polled dcd-gpu lately: the pass waits until one does (bin/worker -queues gpu)"
	for deadline := time.Now().Add(30 * time.Second); ; {
		out.Reset()
		if err := cmdStatus(ctx, e, []string{"stuck"}); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out.String(), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status:\n%s\nwant it to hold %q", out, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Activities on their third try or later are named with why the last
// failed (a timeout by the setting that bounds it); earlier tries, and
// activities never failed, are not.
func TestRetryLine(t *testing.T) {
	fc := temporal.GetDefaultFailureConverter()
	pending := func(name string, attempt int32, err error) *workflowpb.PendingActivityInfo {
		pa := &workflowpb.PendingActivityInfo{ActivityType: &commonpb.ActivityType{Name: name}, Attempt: attempt}
		if err != nil {
			pa.LastFailure = fc.ErrorToFailure(err)
		}
		return pa
	}
	named := func(pa *workflowpb.PendingActivityInfo, id string) *workflowpb.PendingActivityInfo {
		pa.ActivityId = id
		return pa
	}
	denied := temporal.NewApplicationError("store: read \"pool/1.png\": AccessDenied", "")
	line := retryLine([]*workflowpb.PendingActivityInfo{
		pending("EmbedShard", 1, nil),
		pending("Plan", 2, denied),
		named(pending("Retrain", 8, temporal.NewTimeoutError(enumspb.TIMEOUT_TYPE_START_TO_CLOSE, nil)), workflows.MethodStepID("all_pool", "retrain")),
		pending("Evaluate", 3, denied),
		pending("GuardSelection", 4, denied),
		pending("Report", 5, denied),
	})
	want := "Retrain of all_pool is on its try 8; the last failed: it ran past its time limit (a pass's timeouts.activity; raise it for steps this long); " +
		`Evaluate is on its try 3; the last failed: store: read "pool/1.png": AccessDenied; and 2 more steps are retrying`
	if line != want {
		t.Errorf("retryLine =\n%s\nwant\n%s", line, want)
	}
	if line := retryLine([]*workflowpb.PendingActivityInfo{pending("Plan", 2, denied)}); line != "" {
		t.Errorf("a second try: %q, want nothing", line)
	}
}

// The worker a warning tells to start polls the server and namespace the
// starter was given, where they are not a worker's defaults.
func TestIdleLineNamesServer(t *testing.T) {
	g := globals{address: "127.0.0.1:7233", namespace: "default"}
	if got := idleLine("pass", []string{"dcd-cpu", "dcd-train"}, g); !strings.HasSuffix(got, "(bin/worker -queues cpu,train)") {
		t.Errorf("defaults: %q", got)
	}
	g = globals{address: "10.0.0.5:7233", namespace: "team"}
	if got := idleLine("pack", []string{"dcd-cpu"}, g); !strings.HasSuffix(got, "(bin/worker -queues cpu -address 10.0.0.5:7233 -namespace team)") {
		t.Errorf("another server and namespace: %q", got)
	}
}
