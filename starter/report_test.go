package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"dcd/workflows"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func writeReport(t *testing.T) (dir, url string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "runs", "r1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "runs", "r1", "report.html"), []byte("<!doctype html><title>r1</title>"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, "file://" + dir + "?create_dir=1"
}

// With file:// storage, `starter report` prints the report's path; a pass
// without one is an error that says so.
func TestReportPrintsPath(t *testing.T) {
	dir, url := writeReport(t)
	// (A server that answers is asked whether the report is the latest
	// run's: none answers here.)
	code, stdout, stderr, dialed := run(t, "-address", "127.0.0.1:1", "report", "-storage", url, "r1")
	if code != 0 || strings.TrimSpace(stdout) != filepath.Join(dir, "runs", "r1", "report.html") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if dialed != nil {
		t.Error("report dialed Temporal; it only needs storage")
	}
	code, _, stderr, _ = run(t, "report", "-storage", url, "nope")
	if code != 1 || !strings.Contains(stderr, "no report for pass nope") || !strings.Contains(stderr, "-storage URL (or DCD_STORAGE)") {
		t.Errorf("missing report: exit %d, stderr %q, want -storage suggested: the workers' bucket may be another", code, stderr)
	}
	if code, _, _, _ := run(t, "report"); code != 2 {
		t.Errorf("no pass id: exit %d, want 2", code)
	}
}

// -serve serves the report on localhost until interrupted.
func TestReportServes(t *testing.T) {
	_, url := writeReport(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- realMain(ctx, []string{"report", "-serve", "-storage", url, "r1"}, &out, &errOut, false)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasPrefix(out.String(), "http://127.0.0.1:") {
		if time.Now().After(deadline) {
			t.Fatalf("no URL printed; stderr %q", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Get(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "<!doctype html><title>r1</title>" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("GET: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after interrupt; stderr %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still serving after interrupt")
	}
}

// A pass without a report is said to be running, to have ended without
// one (failed, with why; terminated), or, completed, to have written it to
// another bucket than -storage.
func TestReportMissingSaysWhy(t *testing.T) {
	_, url := writeReport(t)
	failed := fmt.Errorf("workflow execution error: %w", temporal.NewNonRetryableApplicationError("config: name: must be set", "InvalidConfig", nil))
	for _, c := range []struct {
		status    enumspb.WorkflowExecutionStatus
		err       error
		want, not string
	}{
		{enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING, nil, "no report for pass p yet: it is still running", "-storage"},
		{enumspb.WORKFLOW_EXECUTION_STATUS_FAILED, failed, "no report for pass p: the pass failed: config: name: must be set", "finished?"},
		{enumspb.WORKFLOW_EXECUTION_STATUS_TERMINATED, &temporal.TerminatedError{}, "no report for pass p: the pass was terminated", "finished?"},
		{enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED, nil, "though the pass completed: its workers wrote it to another bucket; give theirs with -storage URL (or DCD_STORAGE)", "finished?"},
	} {
		e, _, _ := testCLI()
		e.client = &closedClient{status: c.status, err: c.err}
		err := cmdReport(context.Background(), e, []string{"-storage", url, "p"})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), c.not) {
			t.Errorf("%s: %v, want it to say %q", c.status, err, c.want)
		}
	}
}

// closedClient describes a pass as status, and its Get answers err.
type closedClient struct {
	client.Client // the rest: not called
	status        enumspb.WorkflowExecutionStatus
	err           error
}

func (c *closedClient) DescribeWorkflowExecution(context.Context, string, string) (*workflowservice.DescribeWorkflowExecutionResponse, error) {
	return &workflowservice.DescribeWorkflowExecutionResponse{WorkflowExecutionInfo: &workflowpb.WorkflowExecutionInfo{Status: c.status}}, nil
}

func (c *closedClient) ExecuteWorkflow(context.Context, client.StartWorkflowOptions, any, ...any) (client.WorkflowRun, error) {
	return closedRun{err: c.err}, nil
}

// A pass started under the ID of one that has ended is warned that it
// replaces the earlier one's files.
func TestStartPassOverAnEndedOne(t *testing.T) {
	e, _, stderr := testCLI()
	if err := e.startPass(context.Background(), &closedClient{status: enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED}, workflows.PassInput{}, "p"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "warning: a pass p ran before (completed): this one replaces its result, eval.json and report under runs/p/") {
		t.Errorf("stderr %q, want a warning", stderr)
	}
}

func (c *closedClient) GetWorkflow(context.Context, string, string) client.WorkflowRun {
	return closedRun{err: c.err}
}

type closedRun struct {
	client.WorkflowRun // the rest: not called
	err                error
}

func (r closedRun) Get(context.Context, any) error { return r.err }

// idsClient has passes under taken, and under raced ones started between a
// describe and a start.
type idsClient struct {
	client.Client
	taken, raced map[string]bool
	started      []string
}

func (c *idsClient) DescribeWorkflowExecution(_ context.Context, id, _ string) (*workflowservice.DescribeWorkflowExecutionResponse, error) {
	if c.taken[id] {
		return &workflowservice.DescribeWorkflowExecutionResponse{WorkflowExecutionInfo: &workflowpb.WorkflowExecutionInfo{Status: enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED}}, nil
	}
	return nil, serviceerror.NewNotFound("no such workflow")
}

func (c *idsClient) ExecuteWorkflow(_ context.Context, o client.StartWorkflowOptions, _ any, _ ...any) (client.WorkflowRun, error) {
	if c.raced[o.ID] {
		return nil, serviceerror.NewWorkflowExecutionAlreadyStarted("started", "", "")
	}
	c.started = append(c.started, o.ID)
	return closedRun{}, nil
}

// A pass given no -id gets an ID no pass has had, not the one of a pass
// started in the same second, whose results it would replace.
func TestDefaultIDIsFresh(t *testing.T) {
	e, stdout, stderr := testCLI()
	c := &idsClient{taken: map[string]bool{"demo-20261129-101500": true}, raced: map[string]bool{"demo-20261129-101500-2": true}}
	id, err := e.startFreshPass(context.Background(), c, workflows.PassInput{}, "demo-20261129-101500")
	if err != nil || id != "demo-20261129-101500-3" || !slices.Equal(c.started, []string{id}) {
		t.Errorf("started %q as %q (%v), want demo-20261129-101500-3 alone", c.started, id, err)
	}
	if !strings.Contains(stdout.String(), "started pass demo-20261129-101500-3") || stderr.Len() > 0 {
		t.Errorf("stdout %q, stderr %q", stdout, stderr)
	}
}
