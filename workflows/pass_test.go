package workflows_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/demo"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

// smallWorld is the demo at reduced size: enough blur images in the pool
// (600) for 100 queries to find, few enough for CI.
var smallWorld = demo.Options{Train: 6000, Pool: 6000, ErrorShare: 0.1, Test: 2000, Heldout: 600}

var world struct {
	once   sync.Once
	bucket *blob.Bucket
	url    string
	cfg    schemas.Config
	err    error
}

// demoWorld builds the small demo world once per test binary, in a bucket
// shared by the tests that run passes over it.
func demoWorld(t *testing.T) (*blob.Bucket, schemas.Config) {
	t.Helper()
	world.once.Do(func() {
		dir, err := os.MkdirTemp("", "dcd-world")
		if err != nil {
			world.err = err
			return
		}
		cleanups = append(cleanups, func() { os.RemoveAll(dir) })
		world.url = "file://" + dir + "?create_dir=1"
		if world.bucket, world.err = store.Open(context.Background(), world.url); world.err != nil {
			return
		}
		if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
			world.err = err
			return
		}
		world.cfg, world.err = demo.Build(context.Background(), world.bucket, mnist.DefaultDir(), smallWorld, ortrun.Options{Threads: 2})
	})
	if world.err != nil {
		t.Fatalf("demo world: %v", world.err)
	}
	return world.bucket, world.cfg
}

func runPass(t *testing.T, c client.Client, id string, cfg schemas.Config) (workflows.PassResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.PassResult
	err = we.Get(ctx, &res)
	return res, err
}

func method(t *testing.T, ev activities.Eval, name string) activities.Method {
	t.Helper()
	for _, m := range ev.Methods {
		if m.Method == name {
			return m
		}
	}
	t.Fatalf("eval has no method %q: %+v", name, ev.Methods)
	return activities.Method{}
}

// The demo pass, end to end through the dev server: the targeted selection
// lifts E_heldout accuracy by 25 points or more, costs at most one point of
// clean test accuracy, and picks pool images that truly are E's corruption.
// A second pass over the same pool embeds nothing again.
func TestDemoPassFixesTheFailure(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)

	res, err := runPass(t, c, "demo-pass-"+time.Now().UTC().Format("150405.000"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	none, dcd := method(t, res.Eval, "none"), method(t, res.Eval, "dcd")
	t.Logf("none %+v", none)
	t.Logf("dcd  %+v precision %.3f", dcd, *dcd.SelectionPrecision)
	if gain := dcd.HeldoutAccuracy - none.HeldoutAccuracy; gain < 0.25 {
		t.Errorf("E_heldout accuracy %.3f → %.3f: gain %.3f, want ≥ 0.25", none.HeldoutAccuracy, dcd.HeldoutAccuracy, gain)
	}
	if drop := none.TestAccuracy - dcd.TestAccuracy; drop > 0.01 {
		t.Errorf("test accuracy %.3f → %.3f: drop %.3f, want ≤ 0.01", none.TestAccuracy, dcd.TestAccuracy, drop)
	}
	if dcd.SelectionPrecision == nil || *dcd.SelectionPrecision < 0.8 {
		t.Errorf("selection precision %v, want ≥ 0.8", dcd.SelectionPrecision)
	}
	if none.TestAccuracy < 0.9 {
		t.Errorf("the target model before the pass has test accuracy %.3f, want ≥ 0.9", none.TestAccuracy)
	}

	// eval.json in storage holds the same numbers.
	data, err := b.ReadAll(context.Background(), res.EvalKey)
	if err != nil {
		t.Fatal(err)
	}
	var stored activities.Eval
	if err := json.Unmarshal(data, &stored); err != nil {
		t.Fatal(err)
	}
	if stored.RunID != res.RunID || !sameMethod(method(t, stored, "dcd"), dcd) {
		t.Errorf("eval.json %+v differs from the pass result %+v", stored, res.Eval)
	}
	report, err := b.ReadAll(context.Background(), res.ReportKey)
	if err != nil || !strings.Contains(string(report), "dcd") {
		t.Errorf("report.html missing or without the method table: %v", err)
	}

	// A recurring pass finds every shard's features in the cache and so
	// selects the same images.
	again, err := runPass(t, c, "demo-pass-again-"+time.Now().UTC().Format("150405.000"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again.DebugTrain.Size != res.DebugTrain.Size || !sameMethod(method(t, again.Eval, "dcd"), dcd) {
		t.Errorf("second pass differs: %+v vs %+v", again.Eval, res.Eval)
	}
	if again.Shards == 0 || again.CachedShards != again.Shards {
		t.Errorf("second pass embedded %d of %d shards again, want none", again.Shards-again.CachedShards, again.Shards)
	}
}

func sameMethod(a, b activities.Method) bool {
	pa, pb := a.SelectionPrecision, b.SelectionPrecision
	a.SelectionPrecision, b.SelectionPrecision = nil, nil
	return a == b && (pa == nil) == (pb == nil) && (pa == nil || *pa == *pb)
}
