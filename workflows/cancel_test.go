package workflows_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"

	"dcd/activities"
	"dcd/schemas"
	"dcd/workflows"
)

// Cancelling a pass mid-scan stops it and its children promptly: the pass
// ends Canceled and no shard activity is left running, whether the pass
// scans the pool itself or in a child chain (a pool of more than
// ShardsPerRun shards).
func TestCancelStopsThePass(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	ctx := context.Background()
	// A slow similarity model the cache has never seen, so the pool scan
	// takes long enough to be cancelled in the middle on any machine.
	if err := b.WriteAll(ctx, "models/heavy.onnx", heavyModelLasting(t, smallWorld.Pool, 20*time.Second), nil); err != nil {
		t.Fatal(err)
	}
	slow := heavyTarget()
	slow.Logits = ""
	cfg.Similarity = &slow
	for _, tc := range []struct {
		name      string
		shardSize int
		chain     bool
	}{
		{"pool in the pass", 500, false},
		{"pool in a chain", 25, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if shards := (smallWorld.Pool + tc.shardSize - 1) / tc.shardSize; (shards > workflows.ShardsPerRun) != tc.chain {
				t.Fatalf("%d pool shards: in a chain %v, want %v", shards, !tc.chain, tc.chain)
			}
			cfg := cfg
			cfg.Shards.Size = tc.shardSize
			acts := &runningActivities{}
			startWorkerWith(t, c, b, "", worker.Options{Interceptors: []interceptor.WorkerInterceptor{acts}}, workflows.CPUQueue, workflows.GPUQueue)
			cancelMidScan(t, c, acts, cfg, tc.chain)
		})
	}
	// A chain cancelled alone (from the UI), the pass not: the pass fails,
	// naming the step, rather than closing as cancelled with no word
	// (the SDK closes a workflow as cancelled whose error holds a
	// cancellation anywhere). Shards of 24: none cached by the case above.
	t.Run("a chain cancelled alone", func(t *testing.T) {
		cfg := cfg
		cfg.Shards.Size = 24
		startWorkerWith(t, c, b, "", worker.Options{}, workflows.CPUQueue, workflows.GPUQueue)
		id := "cancel-alone-" + time.Now().UTC().Format("150405.000")
		we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		waitPhase(t, c, id, "scan pool")
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
			if _, err := c.DescribeWorkflowExecution(ctx, id+"/pool/0", ""); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no pool chain a minute into the pool scan")
			}
		}
		if err := c.CancelWorkflow(ctx, id+"/pool/0", ""); err != nil {
			t.Fatal(err)
		}
		err = we.Get(ctx, nil)
		var ce *temporal.CanceledError
		var app *temporal.ApplicationError
		if errors.As(err, &ce) || !errors.As(err, &app) || app.Type() != "StepCancelled" || !strings.Contains(err.Error(), id+"/pool/0") {
			t.Fatalf("pass ended with %v, want it failed naming the chain cancelled", err)
		}
		d, err := c.DescribeWorkflowExecution(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		if st := d.GetWorkflowExecutionInfo().GetStatus(); st != enumspb.WORKFLOW_EXECUTION_STATUS_FAILED {
			t.Errorf("the pass closed %v, want failed", st)
		}
	})
}

func cancelMidScan(t *testing.T, c client.Client, acts *runningActivities, cfg schemas.Config, chain bool) {
	ctx := context.Background()
	id := "cancel-" + time.Now().UTC().Format("150405.000")
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	waitPhase(t, c, id, "scan pool")
	// Cancelled mid-scan: once a pool shard's activity runs (the small
	// sets, beside it, may be done already).
	for deadline := time.Now().Add(time.Minute); acts.pool.Load() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no pool shard activity running a minute into the pool scan")
		}
	}
	_, err = c.DescribeWorkflowExecution(ctx, id+"/pool/0", "")
	if chained := err == nil; chained != chain {
		t.Fatalf("pool scanned in a chain: %v, want %v (describe: %v)", chained, chain, err)
	}
	if err := c.CancelWorkflow(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	cancelled := time.Now()
	err = we.Get(ctx, nil)
	var ce *temporal.CanceledError
	if !errors.As(err, &ce) {
		t.Fatalf("pass ended with %v, want cancelled", err)
	}
	if d := time.Since(cancelled); d > 30*time.Second {
		t.Errorf("pass took %s to stop after the cancel", d)
	}
	// Its child chain is closed too, not left scanning.
	for deadline := time.Now().Add(30 * time.Second); chain; time.Sleep(200 * time.Millisecond) {
		d, err := c.DescribeWorkflowExecution(ctx, id+"/pool/0", "")
		if err != nil {
			t.Fatal(err)
		}
		st := d.GetWorkflowExecutionInfo().GetStatus()
		if st != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			// Cancelled with the pass, or terminated when the pass closed
			// first (its parent-close policy).
			if st != enumspb.WORKFLOW_EXECUTION_STATUS_CANCELED && st != enumspb.WORKFLOW_EXECUTION_STATUS_TERMINATED {
				t.Errorf("pool child ended %v, want canceled or terminated", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pool child still running 30s after the pass was cancelled")
		}
	}
	// And the worker runs none of their activities: each learns of the
	// cancel at its next heartbeat, a part (5 s) at most into its shard.
	for deadline := time.Now().Add(30 * time.Second); acts.n.Load() > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d activities still running 30s after the pass was cancelled", acts.n.Load())
		}
	}
}

// runningActivities counts the activities a worker is running, and among
// them those embedding a pool shard.
type runningActivities struct {
	interceptor.WorkerInterceptorBase
	n, pool atomic.Int64
}

func (r *runningActivities) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &runningActivity{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, r: r}
}

type runningActivity struct {
	interceptor.ActivityInboundInterceptorBase
	r *runningActivities
}

func (a *runningActivity) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	a.r.n.Add(1)
	defer a.r.n.Add(-1)
	if len(in.Args) == 1 {
		if e, ok := in.Args[0].(activities.EmbedShardInput); ok && e.Dataset == activities.Pool {
			a.r.pool.Add(1)
			defer a.r.pool.Add(-1)
		}
	}
	return a.Next.ExecuteActivity(ctx, in)
}

// waitPhase polls the pass's progress query until it reports phase.
func waitPhase(t *testing.T, c client.Client, id, phase string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pass %s never reached phase %q", id, phase)
		}
		v, err := c.QueryWorkflow(context.Background(), id, "", workflows.ProgressQuery)
		if err != nil {
			continue // not started yet
		}
		var p workflows.Progress
		if err := v.Get(&p); err != nil {
			t.Fatal(err)
		}
		if p.Phase == phase {
			return
		}
	}
}
