package workflows_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/schemas"
	"dcd/workflows"
)

// A pass reset in Temporal to a point before its pool's plan completed,
// once the pool's listing has changed, plans the pool again and selects
// what a fresh pass over the changed pool selects: its scan takes none of
// the partials the execution reset left (a range of shards planned from
// the old listing, whose pool IDs are now other images'). The pool's plan
// is slowed so that it completes after the query set's embedding began,
// where a scan named before the plan would be replayed by the reset.
func TestResetPassPlansItsScanAgain(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	ctx := context.Background()
	cfg.Shards.Size = 500 // two CachedShards batches, two ranges

	full, err := b.ReadAll(ctx, cfg.Data.Pool.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	changed := path.Dir(cfg.Data.Pool.Manifest) + "/reset-pool.csv" // beside it: its relative URIs resolve alike
	shorter := withoutRows(t, full, path.Dir(cfg.Data.Pool.Manifest), cfg.Shards.Size)
	if err := b.WriteAll(ctx, changed, shorter, nil); err != nil {
		t.Fatal(err)
	}
	cfg.Data.Pool.Manifest = changed

	var first atomic.Value // the run reset
	held := newHolding(func(info activity.Info) bool {
		return info.ActivityType.Name == "Report" && info.WorkflowExecution.RunID == first.Load()
	})
	defer held.done()
	startWorkerWith(t, c, b, "", worker.Options{Interceptors: []interceptor.WorkerInterceptor{held}}, workflows.CPUQueue, workflows.GPUQueue)
	stamp := time.Now().UTC().Format("150405.000")
	if _, err := runPass(t, c, "reset-warm-"+stamp, cfg); err != nil { // every shard of the shorter pool cached
		t.Fatal(err)
	}

	id := "reset-" + stamp
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	first.Store(we.GetRunID())
	select {
	case <-held.held:
	case <-time.After(10 * time.Minute):
		t.Fatal("the pass never reached its report")
	}
	if n := countKeys(t, b, activities.RunKey(id, "topk-ranges/")); n < 2 {
		t.Fatalf("the pass left %d range partials, want 2 or more: the test needs a cached scan's ranges", n)
	}
	if err := b.WriteAll(ctx, changed, full, nil); err != nil { // the listing grows
		t.Fatal(err)
	}
	reset := resetBeforePoolPlanned(t, c, id, we.GetRunID())
	held.done() // the run reset is over: its report may end
	if err := c.GetWorkflow(ctx, id, reset).Get(ctx, nil); err != nil {
		t.Fatal(err)
	}

	fresh := "reset-fresh-" + stamp
	if _, err := runPass(t, c, fresh, cfg); err != nil {
		t.Fatal(err)
	}
	got := readSelection(t, b, id)
	want := readSelection(t, b, fresh)
	if len(want) == 0 {
		t.Fatal("the fresh pass selected nothing")
	}
	if extra, lacks := missing(got, want), missing(want, got); len(extra)+len(lacks) > 0 {
		t.Errorf("the reset pass selected %d images, the fresh pass %d: %d rows of the reset pass's are not the fresh pass's (first %q), %d of the fresh pass's are missing (first %q)",
			len(got), len(want), len(extra), extra[:min(len(extra), 1)], len(lacks), lacks[:min(len(lacks), 1)])
	}
}

// A pass reset in Temporal to a point before its pool's chains started,
// while they run, starts its own under the same IDs and runs to its end:
// a chain's start failed "child workflow execution already started", as a
// reset leaves the reset execution's chains running.
func TestResetPassStartsItsChainsAgain(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	cfg.Shards.Size = 27 // 445 pool shards or so: more than a pass scans itself, and none cached by another test
	id := "reset-chains-" + time.Now().UTC().Format("150405.000")
	held := newHolding(func(info activity.Info) bool { return strings.HasPrefix(info.WorkflowExecution.ID, id+"/pool/") })
	defer held.done()
	startWorkerWith(t, c, b, "", worker.Options{Interceptors: []interceptor.WorkerInterceptor{held}}, workflows.CPUQueue, workflows.GPUQueue)
	we, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.held: // a pool chain runs
	case <-time.After(5 * time.Minute):
		t.Fatal("no pool chain ran")
	}
	reset := resetBeforePoolPlanned(t, c, id, we.GetRunID())
	held.done()
	var res workflows.PassResult
	if err := c.GetWorkflow(context.Background(), id, reset).Get(context.Background(), &res); err != nil {
		t.Fatalf("the pass reset: %v", err)
	}
	if dcd := method(t, res.Eval, schemas.MethodDCD); dcd.DebugTrainSize == 0 {
		t.Errorf("the pass reset selected nothing: %+v", dcd)
	}
}

// withoutRows is the manifest without 51 rows past three quarters of its
// listing, the middle one ending a shard: the shorter listing has a shard
// fewer, whose range partials end at another shard than a scan of the
// full listing cuts its last batch, and every later image has another
// pool ID.
func withoutRows(t *testing.T, manifest []byte, dir string, size int) []byte {
	t.Helper()
	rows, err := csv.NewReader(bytes.NewReader(manifest)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	key := func(uri string) string {
		if strings.HasPrefix(uri, "/") {
			return uri[1:]
		}
		return path.Join(dir, uri)
	}
	// ends is the shard each row is in, and how many shards there are.
	ends := func(rows [][]string) ([]int, int) {
		in, n, shards := make([]int, len(rows)), 0, 0
		for i, r := range rows {
			in[i] = shards
			n++
			if dataset.EndsShard(key(r[0]), n, size) {
				n, shards = 0, shards+1
			}
		}
		return in, shards + min(n, 1)
	}
	header, body := rows[0], rows[1:]
	end := len(body) * 3 / 4
	for end < len(body) && !dataset.Boundary(key(body[end][0]), size) {
		end++
	}
	if end+26 > len(body) {
		t.Fatal("no shard ends in the last quarter of the pool's listing")
	}
	kept := append(append([][]string{header}, body[:end-25]...), body[end+26:]...)
	in, all := ends(body)
	_, fewer := ends(kept[1:])
	if fewer != all-1 || in[end] < 16 {
		t.Fatalf("the shorter listing has %d shards, the full one %d, the rows dropped are in its shard %d: want one fewer, past the first batch's 16", fewer, all, in[end])
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.WriteAll(kept)
	return buf.Bytes()
}

// resetBeforePoolPlanned resets a run to the last workflow task it
// completed before its pool's plan did, and returns the new run's ID.
func resetBeforePoolPlanned(t *testing.T, c client.Client, id, run string) string {
	t.Helper()
	var pool, last int64
	it := c.GetWorkflowHistory(context.Background(), id, run, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		switch e.GetEventType() {
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
			a := e.GetActivityTaskScheduledEventAttributes()
			var in activities.PlanInput
			if a.GetActivityType().GetName() == "Plan" && converterFromPayload(a.GetInput().GetPayloads()[0], &in) == nil && in.Name == activities.Pool {
				pool = e.GetEventId()
			}
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
			if pool != 0 && e.GetActivityTaskCompletedEventAttributes().GetScheduledEventId() == pool {
				if last == 0 {
					t.Fatal("no workflow task completed before the pool's plan did")
				}
				reset, err := c.ResetWorkflowExecution(context.Background(), &workflowservice.ResetWorkflowExecutionRequest{
					Namespace:                 "default",
					WorkflowExecution:         &commonpb.WorkflowExecution{WorkflowId: id, RunId: run},
					Reason:                    "the test resets it",
					WorkflowTaskFinishEventId: last,
					RequestId:                 id + "-reset",
				})
				if err != nil {
					t.Fatal(err)
				}
				return reset.GetRunId()
			}
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
			last = e.GetEventId()
		}
	}
	t.Fatal("the pool's plan never completed")
	return ""
}

// holding holds the activities hold picks until release is closed,
// signalling held as the first begins, and slows the pool's plan by two
// seconds.
type holding struct {
	interceptor.WorkerInterceptorBase
	hold    func(activity.Info) bool
	release chan struct{}
	held    chan struct{}
	once    sync.Once
}

func newHolding(hold func(activity.Info) bool) *holding {
	return &holding{hold: hold, release: make(chan struct{}), held: make(chan struct{}, 1)}
}

// done ends every activity held (failed: its workflow is gone or will
// retry it) and holds no more.
func (h *holding) done() { h.once.Do(func() { close(h.release) }) }

func (h *holding) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &heldActivity{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, h: h}
}

type heldActivity struct {
	interceptor.ActivityInboundInterceptorBase
	h *holding
}

func (a *heldActivity) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	if p, ok := in.Args[0].(activities.PlanInput); ok && p.Name == activities.Pool { // every activity takes one argument
		time.Sleep(2 * time.Second)
	}
	select {
	case <-a.h.release:
	default:
		if a.h.hold(activity.GetInfo(ctx)) {
			select {
			case a.h.held <- struct{}{}:
			default:
			}
			<-a.h.release
			return nil, errors.New("held")
		}
	}
	return a.Next.ExecuteActivity(ctx, in)
}

// countKeys counts the objects under prefix.
func countKeys(t *testing.T, b *blob.Bucket, prefix string) int {
	t.Helper()
	n := 0
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		if _, err := it.Next(context.Background()); err != nil {
			return n
		}
		n++
	}
}

// readSelection is the rows of a pass's dcd selection.
func readSelection(t *testing.T, b *blob.Bucket, run string) []string {
	t.Helper()
	data, err := b.ReadAll(context.Background(), activities.RunKey(run, "methods/dcd/selected.csv"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")[1:]
}

// missing is the rows of a that b lacks.
func missing(a, b []string) []string {
	in := map[string]bool{}
	for _, r := range b {
		in[r] = true
	}
	var out []string
	for _, r := range a {
		if !in[r] {
			out = append(out, r)
		}
	}
	return out
}
