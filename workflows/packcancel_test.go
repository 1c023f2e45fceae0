package workflows_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"

	"dcd/schemas"
	"dcd/workflows"
)

// A cancelled pack says so only once its archives under way have ended:
// one still writing after "cancelled" raced a user deleting the output.
// Each archive here holds on until it is cancelled, then takes a second
// more, as one writing its last MiB would.
func TestPackCancelWaitsForItsArchives(t *testing.T) {
	c, _ := devServer(t)
	b, _ := fileBucket(t)
	writeDigits(t, b, "digits/", 400)
	slow := &lingering{started: make(chan struct{}, 8)}
	startWorkerWith(t, c, b, "", worker.Options{Interceptors: []interceptor.WorkerInterceptor{slow}}, workflows.CPUQueue)
	ctx := context.Background()
	in := workflows.PackInput{Dataset: schemas.Dataset{Prefix: "digits/"}, Out: "cancelled/", PerArchive: 100, Window: 2, Heartbeat: 2 * time.Second}
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "pack-cancel-" + time.Now().UTC().Format("150405.000"), TaskQueue: workflows.CPUQueue}, workflows.PackWorkflow, in)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-slow.started:
		case <-time.After(time.Minute):
			t.Fatal("the pack's archives did not start within a minute")
		}
	}
	if err := c.CancelWorkflow(ctx, we.GetID(), ""); err != nil {
		t.Fatal(err)
	}
	err = we.Get(ctx, nil)
	ended := time.Now()
	var cancelled *temporal.CanceledError
	if !errors.As(err, &cancelled) {
		t.Fatalf("the pack ended with %v, want cancelled", err)
	}
	slow.mu.Lock()
	defer slow.mu.Unlock()
	if len(slow.ends) != 2 {
		t.Fatalf("%d archives had ended when the pack said it was cancelled, want the 2 under way", len(slow.ends))
	}
	for _, end := range slow.ends {
		if end.After(ended) {
			t.Errorf("an archive ended %v after the pack said it was cancelled", end.Sub(ended))
		}
	}
}

// lingering holds each PackArchive until it is cancelled, heartbeating,
// then a second more, and records when it ends.
type lingering struct {
	interceptor.WorkerInterceptorBase
	started chan struct{}
	mu      sync.Mutex
	ends    []time.Time
}

func (l *lingering) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &lingeringActivity{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, l: l}
}

type lingeringActivity struct {
	interceptor.ActivityInboundInterceptorBase
	l *lingering
}

func (a *lingeringActivity) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	if activity.GetInfo(ctx).ActivityType.Name != "PackArchive" {
		return a.Next.ExecuteActivity(ctx, in)
	}
	a.l.started <- struct{}{}
	for ctx.Err() == nil {
		activity.RecordHeartbeat(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	time.Sleep(time.Second)
	a.l.mu.Lock()
	a.l.ends = append(a.l.ends, time.Now())
	a.l.mu.Unlock()
	return nil, ctx.Err()
}
