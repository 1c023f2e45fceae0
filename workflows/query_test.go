package workflows_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"dcd/activities"
	"dcd/workflows"
)

// A chain scanning cached shards, which it searches in local activities
// that keep its workflow task open, still answers its progress query
// within a few seconds, mid-scan: now and then it runs a shard alone as an
// activity, letting the task end. Every shard is searched exactly once,
// and the chain's history replays.
func TestCachedScanAnswersQueries(t *testing.T) {
	c, _ := devServer(t)
	var mu sync.Mutex
	searched := map[int]int{}
	var alone atomic.Int64
	// A cached pool shard that takes 40 ms to search, locally or not.
	embed := func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		time.Sleep(40 * time.Millisecond)
		if !in.CachedOnly {
			return activities.EmbedShardResult{}, errors.New("a cached shard embedded")
		}
		if !activity.GetInfo(ctx).IsLocalActivity {
			alone.Add(1)
		}
		mu.Lock()
		searched[in.Shard]++
		mu.Unlock()
		return activities.EmbedShardResult{Images: 1, Cached: true, TopK: &activities.TopKShardResult{}}, nil
	}
	for _, q := range []string{workflows.CPUQueue, workflows.GPUQueue} {
		w := worker.New(c, q, worker.Options{})
		w.RegisterWorkflow(workflows.ShardsWorkflow)
		w.RegisterActivityWithOptions(embed, activity.RegisterOptions{Name: "EmbedShard"})
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}

	// 300 shards, 4 at a time: about 3 s of local searches.
	const n = 300
	ctx := context.Background()
	id := "query-" + time.Now().UTC().Format("150405.000")
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.ShardsWorkflow, workflows.ShardsInput{
		Run: id, Dataset: activities.Pool, First: 0, End: n, Window: 4, K: 5, Heartbeat: time.Minute, Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	finished := make(chan error, 1)
	go func() {
		var r workflows.ShardsResult
		finished <- run.Get(ctx, &r)
	}()
	midScan := 0
	for {
		select {
		case err := <-finished:
			if err != nil {
				t.Fatal(err)
			}
			if midScan == 0 {
				t.Error("no progress query answered while the shards were being searched")
			}
			if alone.Load() == 0 {
				t.Error("no shard ran as an activity")
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range n {
				if searched[i] != 1 {
					t.Errorf("shard %d searched %d times", i, searched[i])
				}
			}
			replay(t, c, id)
			return
		case <-time.After(300 * time.Millisecond):
		}
		qctx, cancel := context.WithTimeout(ctx, 4*time.Second)
		v, err := c.QueryWorkflow(qctx, id, "", workflows.ProgressQuery)
		cancel()
		var r workflows.ShardsResult
		if err == nil {
			err = v.Get(&r)
		}
		switch {
		case err != nil && len(finished) == 0:
			t.Fatalf("progress query mid-scan: %v", err)
		case err == nil && r.Shards > 0 && r.Shards < n:
			midScan++
		}
	}
}
