package workflows_test

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/worker"

	"dcd/activities"
	"dcd/internal/demo"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/schemas"
	"dcd/workflows"
)

// A recurring pass on two workers: its cached shards are looked up by
// both (the pool's searched too, by either or both), in batches that each
// write one partial top-k,
// and the merge over those finds the neighbours the first pass found over
// each shard's own partial: dcd selects the same images.
func TestRecurringPassOnTwoWorkers(t *testing.T) {
	c, _ := devServer(t)
	b, url := fileBucket(t)
	for _, name := range []string{"two-a", "two-b"} {
		startWorkerWith(t, c, b, url, worker.Options{Identity: name, MaxConcurrentActivityExecutionSize: 2}, workflows.CPUQueue, workflows.GPUQueue)
	}
	ctx := context.Background()
	stamp := time.Now().UTC().Format("150405.000")
	cfg, err := demo.Build(ctx, b, mnist.DefaultDir(), demo.Options{Train: 2000, Pool: 3000, ErrorShare: 0.05, Test: 500, Heldout: 300, Prefix: "two/"}, ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Shards.Size = 40 // about 75 pool shards: five batches
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodDCD}
	first, err := runPass(t, c, "two-first-"+stamp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	second, err := runPass(t, c, "two-second-"+stamp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if second.CachedShards != second.Shards {
		t.Fatalf("the second pass found %d of its %d shards cached", second.CachedShards, second.Shards)
	}

	// Who ran the second pass's lookups, and the range partials they
	// wrote: the pool's in the pass, the other sets' in their chains (the
	// pool's five batches alone could all go to one worker while the
	// other's slots hold the chains').
	byWorker := map[string]int{}
	ranges := 0
	for _, id := range []string{"", "/" + activities.Train + "/0", "/" + activities.Test + "/0", "/" + activities.ErrorHeldout + "/0"} {
		id = "two-second-" + stamp + id
		if _, err := c.DescribeWorkflowExecution(ctx, id, ""); err != nil {
			continue // a set the pass ran itself
		}
		it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		batches := map[int64]bool{}
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatal(err)
			}
			if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil && a.GetActivityType().GetName() == "CachedShards" {
				batches[ev.GetEventId()] = true
			}
			if a := ev.GetActivityTaskStartedEventAttributes(); a != nil && batches[a.GetScheduledEventId()] {
				byWorker[a.GetIdentity()]++
			}
			if a := ev.GetActivityTaskCompletedEventAttributes(); a != nil && batches[a.GetScheduledEventId()] {
				var res activities.CachedShardsResult
				if err := converter.GetDefaultDataConverter().FromPayloads(a.GetResult(), &res); err != nil {
					t.Fatal(err)
				}
				for _, s := range res.Shards {
					if s.TopK != nil && strings.Contains(s.TopK.Key, "/topk-ranges/") {
						ranges++
					}
				}
			}
		}
	}
	t.Logf("CachedShards batches by worker: %v", byWorker)
	if len(byWorker) != 2 {
		t.Errorf("the batches ran on %v, want both workers", byWorker)
	}
	if ranges == 0 {
		t.Error("no batch wrote a range partial")
	}
	// Merged and reported, a pass leaves none of its partials behind.
	for _, id := range []string{"two-first-" + stamp, "two-second-" + stamp} {
		for _, dir := range []string{"/topk/", "/topk-ranges/"} {
			if left := keys(t, b, "runs/"+id+dir); len(left) > 0 {
				t.Errorf("%d partials left under runs/%s%s, as %s", len(left), id, dir, left[0])
			}
		}
	}

	was, now := method(t, first.Eval, schemas.MethodDCD), method(t, second.Eval, schemas.MethodDCD)
	before, after := selected(t, b, was.DebugTrain), selected(t, b, now.DebugTrain)
	if len(after) == 0 || !maps.Equal(before, after) {
		t.Errorf("dcd selected %d images over %d range partials, %d over the shards' own, not the same", len(after), ranges, len(before))
	}
}
