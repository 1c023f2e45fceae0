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
	var asActivity atomic.Int64
	// A cached pool shard that takes 320 ms to search, locally or not,
	// as from a remote store.
	embed := func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		time.Sleep(320 * time.Millisecond)
		if !in.CachedOnly {
			return activities.EmbedShardResult{}, errors.New("a cached shard embedded")
		}
		if !activity.GetInfo(ctx).IsLocalActivity {
			asActivity.Add(1)
		}
		mu.Lock()
		searched[in.Shard]++
		mu.Unlock()
		return activities.EmbedShardResult{Images: 1, Cached: true, TopK: &activities.TopKShardResult{}}, nil
	}
	chainWorkers(t, c, embed)

	// 300 shards, 32 at a time (a window of 4, 8 cached shards for each):
	// about 3 s of local searches.
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
			if asActivity.Load() == 0 {
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

// A recurring scan on a remote store: cached shards, whose searches wait
// mostly on the store, run many at once (eight per shard of the window),
// while shards that must be embedded run at most the window at once, as
// configured. Every shard is searched or embedded exactly once, and the
// chain's history replays.
func TestCachedShardsRunWide(t *testing.T) {
	c, _ := devServer(t)
	const n, window, fresh = 240, 4, 160 // shards from fresh on are new
	var mu sync.Mutex
	done := map[int]int{}
	var local, embedding, maxLocal, maxEmbedding int
	track := func(count, most *int) func() {
		mu.Lock()
		defer mu.Unlock()
		*count++
		*most = max(*most, *count)
		return func() {
			mu.Lock()
			defer mu.Unlock()
			*count--
		}
	}
	embed := func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		if in.CachedOnly && activity.GetInfo(ctx).IsLocalActivity {
			defer track(&local, &maxLocal)()
		} else if !in.CachedOnly {
			defer track(&embedding, &maxEmbedding)()
		}
		time.Sleep(100 * time.Millisecond)
		cached := in.Shard < fresh
		if in.CachedOnly && !cached {
			return activities.EmbedShardResult{}, nil
		}
		mu.Lock()
		done[in.Shard]++
		mu.Unlock()
		return activities.EmbedShardResult{Images: 1, Cached: cached, TopK: &activities.TopKShardResult{}}, nil
	}
	chainWorkers(t, c, embed)
	ctx := context.Background()
	id := "wide-" + time.Now().UTC().Format("150405.000")
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.ShardsWorkflow, workflows.ShardsInput{
		Run: id, Dataset: activities.Pool, First: 0, End: n, Window: window, K: 5, Heartbeat: time.Minute, Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	var r workflows.ShardsResult
	if err := run.Get(ctx, &r); err != nil {
		t.Fatal(err)
	}
	if r.Shards != n || r.Cached != fresh {
		t.Errorf("result %+v, want %d shards, %d cached", r, n, fresh)
	}
	for i := range n {
		if done[i] != 1 {
			t.Errorf("shard %d searched or embedded %d times", i, done[i])
		}
	}
	if maxLocal < 4*window {
		t.Errorf("at most %d cached shards searched at once, want at least %d (of up to %d)", maxLocal, 4*window, 8*window)
	}
	if maxEmbedding > window {
		t.Errorf("%d shards embedded at once, window %d", maxEmbedding, window)
	}
	replay(t, c, id)
}

// chainWorkers runs a pool chain's workflow on both queues of c, with
// embed as its EmbedShard.
func chainWorkers(t *testing.T, c client.Client, embed func(context.Context, activities.EmbedShardInput) (activities.EmbedShardResult, error)) {
	t.Helper()
	for _, q := range []string{workflows.CPUQueue, workflows.GPUQueue} {
		w := worker.New(c, q, worker.Options{})
		w.RegisterWorkflow(workflows.ShardsWorkflow)
		w.RegisterActivityWithOptions(embed, activity.RegisterOptions{Name: "EmbedShard"})
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}
}
