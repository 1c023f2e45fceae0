package activities_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/store"
	"dcd/internal/store/storetest"
	"dcd/schemas"
)

// A plan whose store went down goes on, in the retry, from where it stood:
// it writes none of the shards written before again, and its shards and
// the pool's index are those of a plan never interrupted. A manifest that
// changed in between is planned from the start.
func TestPlanGoesOnWhereItStood(t *testing.T) {
	defer func(d time.Duration) { *activities.CheckpointEvery = d }(*activities.CheckpointEvery)
	*activities.CheckpointEvery = time.Millisecond
	ctx := context.Background()
	b, err := store.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	manifest := func(rows int) {
		var m strings.Builder
		m.WriteString("uri,label\n")
		for i := range rows {
			fmt.Fprintf(&m, "/pool/%05d.png,%d\n", i, i%10)
		}
		if err := b.WriteAll(ctx, "pool.csv", []byte(m.String()), nil); err != nil {
			t.Fatal(err)
		}
	}
	var ts testsuite.WorkflowTestSuite
	plan := func(acts *activities.Activities, run string, retry bool) (activities.PlanResult, error) {
		env := ts.NewTestActivityEnvironment()
		env.RegisterActivity(acts)
		if retry { // an attempt before heartbeated
			env.SetHeartbeatDetails(activities.PlanResult{})
		}
		var res activities.PlanResult
		v, err := env.ExecuteActivity(acts.Plan, activities.PlanInput{Run: run, Name: activities.Pool, Dataset: schemas.Dataset{Manifest: "pool.csv"}, ShardSize: 100})
		if err == nil {
			err = v.Get(&res)
		}
		return res, err
	}
	checkpoint := func(run string) (activities.PlanCheckpoint, bool) {
		var cp activities.PlanCheckpoint
		data, err := b.ReadAll(ctx, activities.PlanCheckpointKey(run, activities.Pool))
		return cp, err == nil && json.Unmarshal(data, &cp) == nil
	}
	// same checks that run's shards and index are whole's.
	same := func(run, whole string, res activities.PlanResult) {
		t.Helper()
		for i := range res.Shards {
			got, err1 := b.ReadAll(ctx, activities.ShardKey(run, activities.Pool, i))
			want, err2 := b.ReadAll(ctx, activities.ShardKey(whole, activities.Pool, i))
			if err := errors.Join(err1, err2); err != nil || string(got) != string(want) {
				t.Fatalf("%s: shard %d differs from the uninterrupted plan's (%v)", run, i, err)
			}
		}
		got, err1 := b.ReadAll(ctx, activities.ShardIndexKey(run, activities.Pool))
		want, err2 := b.ReadAll(ctx, activities.ShardIndexKey(whole, activities.Pool))
		if err := errors.Join(err1, err2); err != nil || string(got) != string(want) {
			t.Fatalf("%s: the pool's index differs from the uninterrupted plan's (%v)", run, err)
		}
		if _, ok := checkpoint(run); ok {
			t.Errorf("%s: the progress stored is left after the plan", run)
		}
	}

	var own activities.PlanCheckpoint // as the attempts here store it
	var whole activities.PlanResult   // the last manifest's, uninterrupted
	for _, changed := range []bool{false, true} {
		run := fmt.Sprintf("changed-%v", changed)
		manifest(30_000)
		var err error
		whole, err = plan(&activities.Activities{Bucket: b}, "whole", false)
		if err != nil || whole.Shards < 200 {
			t.Fatalf("plan: %+v, %v; want about 300 shards", whole, err)
		}
		// Shard 150's write fails as a store that is down does, once the
		// shards before it are written and their progress stored.
		failAt := whole.Shards / 2
		var mu sync.Mutex
		written := map[string]bool{}
		hooks := &storetest.Hooks{BeforeWrite: func(_ context.Context, key string) error {
			if key == activities.ShardKey(run, activities.Pool, failAt) {
				for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(time.Millisecond) {
					if cp, ok := checkpoint(run); ok && cp.Progress.Shards == failAt {
						break
					}
				}
				return fmt.Errorf("store down: %w", context.DeadlineExceeded)
			}
			mu.Lock()
			defer mu.Unlock()
			written[key] = true
			return nil
		}}
		acts := &activities.Activities{Bucket: storetest.Hooked(b, hooks)}
		_, err = plan(acts, run, false)
		if appErr, ok := errors.AsType[*temporal.ApplicationError](err); err == nil || ok && appErr.NonRetryable() {
			t.Fatalf("a store down: %v, want an error Temporal retries", err)
		}
		cp, ok := checkpoint(run)
		if !ok || cp.Progress.Shards != failAt || len(cp.FirstIDs) != failAt || cp.RunID == "" || cp.Activity == "" {
			t.Fatalf("the failed attempt stored %+v (%v), want the %d shards before the failure", cp.Progress, ok, failAt)
		}
		own = cp

		if changed {
			manifest(30_100)
			if whole, err = plan(&activities.Activities{Bucket: b}, "whole", false); err != nil {
				t.Fatal(err)
			}
		}
		written = map[string]bool{}
		hooks.BeforeWrite = func(_ context.Context, key string) error {
			mu.Lock()
			defer mu.Unlock()
			written[key] = true
			return nil
		}
		res, err := plan(acts, run, true)
		if err != nil || res != whole {
			t.Fatalf("the retry planned %+v, %v; want %+v", res, err, whole)
		}
		for i := range res.Shards {
			again := written[activities.ShardKey(run, activities.Pool, i)]
			if want := changed || i >= failAt; again != want {
				t.Fatalf("manifest changed %v: the retry wrote shard %d %v, want %v (%d written before)", changed, i, again, want, failAt)
			}
		}
		same(run, "whole", res)
	}

	// The index's write failing after every shard is written: the retry
	// writes no shard again (and reads no row: the CSV's mark is at its
	// end, from which S3 refuses a range).
	indexed := false
	var shardWrites atomic.Int32
	hooks := &storetest.Hooks{BeforeWrite: func(_ context.Context, key string) error {
		switch {
		case key == activities.ShardIndexKey("indexed", activities.Pool) && !indexed:
			indexed = true
			return errors.New("permission denied")
		case strings.HasSuffix(key, ".csv"):
			shardWrites.Add(1)
		}
		return nil
	}}
	acts := &activities.Activities{Bucket: storetest.Hooked(b, hooks)}
	*activities.CheckpointEvery = time.Hour // stored as the plan fails, not before
	if _, err := plan(acts, "indexed", false); err == nil || !strings.Contains(err.Error(), activities.ShardIndexKey("indexed", activities.Pool)) {
		t.Fatalf("the index's write failed: %v, want an error naming the shard index", err)
	}
	if cp, ok := checkpoint("indexed"); !ok || cp.Progress.Shards != whole.Shards {
		t.Fatalf("stored %+v (%v) after the index's write failed, want all %d shards", cp.Progress, ok, whole.Shards)
	}
	shardWrites.Store(0)
	if res, err := plan(acts, "indexed", true); err != nil || res != whole || shardWrites.Load() != 0 {
		t.Fatalf("the retry planned %+v, %v, writing %d shards; want %+v, none written again", res, err, shardWrites.Load(), whole)
	}
	same("indexed", "whole", whole)

	// So retried, a pool none of whose labels is a class still fails,
	// though the retry lists no image: what the attempt before saw of
	// them is in the checkpoint.
	indexed = false
	hooks.BeforeWrite = func(_ context.Context, key string) error {
		if key == activities.ShardIndexKey("named", activities.Pool) && !indexed {
			indexed = true
			return errors.New("permission denied")
		}
		return nil
	}
	named := func(retry bool) error {
		env := ts.NewTestActivityEnvironment()
		env.RegisterActivity(acts)
		if retry {
			env.SetHeartbeatDetails(activities.PlanResult{})
		}
		_, err := env.ExecuteActivity(acts.Plan, activities.PlanInput{Run: "named", Name: activities.Pool, Dataset: schemas.Dataset{Manifest: "pool.csv"}, ShardSize: 100, Classes: []string{"zero", "one"}})
		return err
	}
	if err := named(false); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("the index's write failed: %v", err)
	}
	if err := named(true); err == nil || !strings.Contains(err.Error(), "none of its 30100 images has a weak label that is a class") {
		t.Errorf("the retry of a plan of a pool labelled by class index: %v, want the labels' failure", err)
	}

	// A checkpoint another workflow run or activity left, under a run's
	// ID used again, is not this plan's.
	for _, other := range []activities.PlanCheckpoint{{RunID: "another run", Activity: own.Activity}, {RunID: own.RunID, Activity: "another activity"}} {
		other.Dataset, other.Cut = own.Dataset, own.Cut
		other.Progress, other.FirstIDs = dataset.Progress{Shards: 1, Mark: dataset.Mark{Next: 50}}, []int64{0}
		data, _ := json.Marshal(other)
		b.WriteAll(ctx, activities.PlanCheckpointKey("again", activities.Pool), data, nil)
		var first atomic.Bool
		res, err := plan(&activities.Activities{Bucket: storetest.Hooked(b, &storetest.Hooks{BeforeWrite: func(_ context.Context, key string) error {
			if key == activities.ShardKey("again", activities.Pool, 0) {
				first.Store(true)
			}
			return nil
		}})}, "again", true)
		if err != nil || !first.Load() {
			t.Errorf("planned %+v, %v, shard 0 written %v: want the checkpoint of run %q, activity %q ignored", res, err, first.Load(), other.RunID, other.Activity)
		}
	}
}

// A run's own files the worker's bucket refuses (a policy, a full disk:
// its shards, its index, an archive's cached index) fail the plan's try,
// named, as the store's fault, not the dataset's (data.pool), and are
// retried as every write of the worker's own files is: fixed meanwhile,
// the pass goes on.
func TestPlanOwnWriteRefused(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.WriteAll(ctx, "pool.csv", []byte("uri,label\n/pool/0.png,a\n/pool/1.png,b\n"), nil); err != nil {
		t.Fatal(err)
	}
	// A WebDataset's archive, whose index planning caches in the
	// worker's bucket too.
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	for name, body := range map[string]string{"s0.png": "png", "s0.cls": "a"} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
	}
	tw.Close()
	if err := b.WriteAll(ctx, "wds/000.tar", archive.Bytes(), nil); err != nil {
		t.Fatal(err)
	}
	manifest, wds := schemas.Dataset{Manifest: "pool.csv"}, schemas.Dataset{WebDataset: "wds/"}
	for _, c := range []struct {
		ds      schemas.Dataset
		refused string // the key, or its prefix, refused
	}{{manifest, activities.ShardKey("r", activities.Pool, 0)}, {manifest, activities.ShardIndexKey("r", activities.Pool)}, {wds, "webdataset/"}} {
		hooked := storetest.Hooked(b, &storetest.Hooks{BeforeWrite: func(_ context.Context, key string) error {
			if strings.HasPrefix(key, c.refused) {
				return fs.ErrPermission
			}
			return nil
		}})
		var ts testsuite.WorkflowTestSuite
		env := ts.NewTestActivityEnvironment()
		acts := &activities.Activities{Bucket: hooked}
		env.RegisterActivity(acts)
		_, err := env.ExecuteActivity(acts.Plan, activities.PlanInput{Run: "r", Name: activities.Pool, Dataset: c.ds, ShardSize: 100})
		var app *temporal.ApplicationError
		if !errors.As(err, &app) || app.NonRetryable() || app.Type() == "InvalidInput" || !strings.Contains(err.Error(), c.refused) || strings.Contains(err.Error(), "data.pool") {
			t.Errorf("the worker's bucket refuses %s: %v, want a retried storage error naming it, not the dataset", c.refused, err)
		}
	}
}
