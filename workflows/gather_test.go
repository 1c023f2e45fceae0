package workflows_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"gocloud.dev/blob"

	"dcd/internal/demo"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

// A recurring pass whose target is its similarity model reads no pool
// image: the pool scan cached the target's features of every pool image,
// and each method's selection takes its rows from them. After a first pass
// the pool's image files are deleted (its manifest stays); a pass with
// other failures (half of E_sample) then selects other images, dcd and
// random alike, and still fixes the failure. Embedding any selected image
// again would have failed that pass: no pool image can be read. The rows
// are read by preads from a file:// bucket, and by ranged requests from a
// real S3 server (versitygw).
func TestRecurringPassReadsNoPoolImage(t *testing.T) {
	c, _ := devServer(t)
	t.Run("file", func(t *testing.T) {
		b, _ := demoWorld(t)
		recurringPassReadsNoPoolImage(t, c, b)
	})
	t.Run("s3", func(t *testing.T) {
		b, err := store.Open(context.Background(), s3Server(t, "dcd-gather"))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		recurringPassReadsNoPoolImage(t, c, b)
	})
}

func recurringPassReadsNoPoolImage(t *testing.T, c client.Client, b *blob.Bucket) {
	startWorker(t, c, b)
	ctx := context.Background()
	stamp := time.Now().UTC().Format("150405.000")
	prefix := "gather-" + stamp + "/"
	cfg, err := demo.Build(ctx, b, mnist.DefaultDir(), demo.Options{Train: 4000, Pool: 6000, ErrorShare: 0.05, Test: 1000, Heldout: 500, Prefix: prefix}, ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Similarity != nil {
		t.Fatal("the demo config names a similarity model; this test needs the target to serve")
	}
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodRandom, schemas.MethodDCD}
	first, err := runPass(t, c, "gather-first-"+stamp, cfg)
	if err != nil {
		t.Fatal(err)
	}

	poolDir := path.Dir(cfg.Data.Pool.Manifest) + "/"
	deleted := 0
	for _, key := range keys(t, b, poolDir) {
		if key == cfg.Data.Pool.Manifest {
			continue
		}
		if err := b.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if deleted < 6000 {
		t.Fatalf("deleted %d pool images, want the 6000", deleted)
	}
	// Other failures: every other E_sample image.
	var half bytes.Buffer
	half.WriteString("uri,label\n")
	for i, key := range keys(t, b, cfg.Data.ErrorSample.Prefix) {
		if i%2 == 0 {
			label := path.Base(path.Dir(key))
			fmt.Fprintf(&half, "/%s,%s\n", key, label)
		}
	}
	second := cfg
	second.Data.ErrorSample = schemas.Dataset{Manifest: prefix + "half_sample.csv"}
	if err := b.WriteAll(ctx, second.Data.ErrorSample.Manifest, half.Bytes(), nil); err != nil {
		t.Fatal(err)
	}
	res, err := runPass(t, c, "gather-second-"+stamp, second)
	if err != nil {
		t.Fatalf("the pass after the pool's images were deleted: %v", err)
	}

	for _, m := range []string{schemas.MethodDCD, schemas.MethodRandom} {
		was, now := method(t, first.Eval, m), method(t, res.Eval, m)
		if now.DebugTrainSize == 0 || now.DebugTrain == "" {
			t.Fatalf("%s selected nothing", m)
		}
		before, after := selected(t, b, was.DebugTrain), selected(t, b, now.DebugTrain)
		same := 0
		for uri := range after {
			if before[uri] {
				same++
			}
		}
		t.Logf("%s: %d images selected, %d before, %d in both", m, len(after), len(before), same)
		if same == len(after) && same == len(before) {
			t.Errorf("%s selected the first pass's images again: their features were cached, nothing was gathered", m)
		}
	}
	// The pass replays from its history as it ran: its versioned steps
	// (gathering, local steps, a set run inline) are deterministic.
	replay(t, c, "gather-second-"+stamp)

	none, dcd := method(t, res.Eval, schemas.MethodNone), method(t, res.Eval, schemas.MethodDCD)
	t.Logf("E_heldout %.3f → %.3f with %d images", none.HeldoutAccuracy, dcd.HeldoutAccuracy, dcd.DebugTrainSize)
	if gain := dcd.HeldoutAccuracy - none.HeldoutAccuracy; gain < 0.15 {
		t.Errorf("dcd lifted E_heldout by %.3f, want ≥ 0.15", gain)
	}
}

// replay replays the history of workflow id's last run with this code.
func replay(t *testing.T, c client.Client, id string) {
	t.Helper()
	r := worker.NewWorkflowReplayer()
	r.RegisterWorkflow(workflows.DebugPass)
	r.RegisterWorkflow(workflows.ShardsWorkflow)
	// From the server, so the replay runs under the pass's ID, which
	// names its children.
	if err := r.ReplayWorkflowExecution(context.Background(), c.WorkflowService(), quietLogger(), "default", workflow.Execution{ID: id}); err != nil {
		t.Errorf("%s does not replay: %v", id, err)
	}
}

// keys lists the keys under prefix, in order.
func keys(t *testing.T, b *blob.Bucket, prefix string) []string {
	t.Helper()
	var out []string
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(context.Background())
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(obj.Key, "/") {
			out = append(out, obj.Key)
		}
	}
}
