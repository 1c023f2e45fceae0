package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"dcd/internal/devserver"
	"dcd/schemas"
	"dcd/workflows"
)

// TestIdleQueuesNamed starts a pass on a real dev server with no worker,
// then with a worker on the CPU queue only: the starter names the queues
// left without a worker, so that a pass waiting on them does not look
// merely slow.
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
	c := srv.Client()

	cfg := testConfig()
	cfg.Retrain.Trainer = &schemas.Trainer{Command: []string{"train", "{model}"}}
	path := filepath.Join(t.TempDir(), "pass.yaml")
	b, err := configYAML(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	e, out, errOut := testCLI()
	e.client = c
	if err := cmdRun(ctx, e, []string{"-config", path, "-id", "idle"}); err != nil {
		t.Fatal(err)
	}
	want := "no worker polls dcd-cpu, dcd-gpu, dcd-train: the pass waits until one does (bin/worker -queues cpu,gpu,train)"
	if !strings.Contains(errOut.String(), want) {
		t.Fatalf("run's warning:\n%s\nwant it to hold %q", errOut, want)
	}

	w := worker.New(c, workflows.CPUQueue, worker.Options{DisableWorkflowWorker: true})
	w.RegisterActivityWithOptions(func(context.Context) error { return nil }, activity.RegisterOptions{Name: "Noop"})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	want = "no worker polls dcd-gpu, dcd-train: the pass waits"
	for deadline := time.Now().Add(20 * time.Second); ; {
		out.Reset()
		if err := cmdStatus(ctx, e, []string{"idle"}); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out.String(), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status with a CPU worker:\n%s\nwant it to hold %q", out, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
