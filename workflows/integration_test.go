package workflows_test

// Integration tests: a real Temporal dev server, real ONNX Runtime, real
// file:// blob storage. They need `make setup` (scripts/setup.sh) to have
// installed the Temporal CLI and the ONNX Runtime library.

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/devserver"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

var server struct {
	once     sync.Once
	srv      *testsuite.DevServer
	hostport string
	err      error
}

// devServer starts one dev server for the package's tests.
func devServer(t *testing.T) (client.Client, string) {
	t.Helper()
	server.once.Do(func() {
		bin, err := devserver.TemporalBinary()
		if err != nil {
			server.err = err
			return
		}
		server.srv, server.err = testsuite.StartDevServer(context.Background(), testsuite.DevServerOptions{
			ExistingPath:  bin,
			LogLevel:      "error",
			ClientOptions: &client.Options{Logger: quietLogger()},
			Stdout:        io.Discard,
			Stderr:        io.Discard,
		})
		if server.err == nil {
			server.hostport = server.srv.FrontendHostPort()
		}
	})
	if server.err != nil {
		t.Fatalf("start dev server: %v", server.err)
	}
	c, err := client.Dial(client.Options{HostPort: server.hostport, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, server.hostport
}

// cleanups run after every test, for state shared between tests.
var cleanups []func()

func TestMain(m *testing.M) {
	code := m.Run()
	if server.srv != nil {
		server.srv.Stop()
	}
	for _, f := range cleanups {
		f()
	}
	os.Exit(code)
}

func quietLogger() log.Logger {
	return log.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// fileBucket is a file:// bucket in a fresh temporary folder.
func fileBucket(t *testing.T) (*blob.Bucket, string) {
	t.Helper()
	dir := t.TempDir()
	url := "file://" + dir + "?create_dir=1"
	b, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, url
}

// startWorker runs an in-process worker on the cpu and gpu queues until the
// test ends.
func startWorker(t *testing.T, c client.Client, b *blob.Bucket) {
	t.Helper()
	startWorkerOn(t, c, b, "", workflows.CPUQueue, workflows.GPUQueue)
}

// startWorkerOn runs an in-process worker on the given queues; storageURL is
// the bucket's URL, which external trainers are told.
func startWorkerOn(t *testing.T, c client.Client, b *blob.Bucket, storageURL string, queues ...string) {
	t.Helper()
	startWorkerWith(t, c, b, storageURL, worker.Options{}, queues...)
}

// startWorkerWith is startWorkerOn with the workers' options.
func startWorkerWith(t *testing.T, c client.Client, b *blob.Bucket, storageURL string, opts worker.Options, queues ...string) {
	t.Helper()
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatal(err)
	}
	sessions := activities.NewSessions(ortrun.Options{Threads: 2}, ortrun.Options{Threads: 2})
	t.Cleanup(sessions.Close)
	acts := &activities.Activities{Bucket: b, Mem: memory.NewGoAllocator(), Sessions: sessions, StorageURL: storageURL}
	if opts.MaxHeartbeatThrottleInterval == 0 {
		// As the worker binary beats: an activity learns of a cancel
		// within HeartbeatThrottle, not 80 % of the heartbeat timeout.
		opts.MaxHeartbeatThrottleInterval = activities.HeartbeatThrottle
	}
	for _, q := range queues {
		w := worker.New(c, q, opts)
		w.RegisterWorkflow(workflows.DebugPass)
		w.RegisterWorkflow(workflows.ShardsWorkflow)
		w.RegisterWorkflow(workflows.PackWorkflow)
		w.RegisterActivity(acts)
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}
}

// binaries are the commands built by buildBinary, by package.
var binaries struct {
	sync.Mutex
	paths map[string]string
}

// buildBinary builds a command package (e.g. "dcd/worker") once per test
// binary and returns its path.
func buildBinary(t *testing.T, pkg string) string {
	t.Helper()
	binaries.Lock()
	defer binaries.Unlock()
	if p, ok := binaries.paths[pkg]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "dcd-bin")
	if err != nil {
		t.Fatal(err)
	}
	cleanups = append(cleanups, func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, filepath.Base(pkg))
	if out, err := exec.Command("go", "build", "-o", path, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	if binaries.paths == nil {
		binaries.paths = map[string]string{}
	}
	binaries.paths[pkg] = path
	return path
}

// heavyModelLasting is a small CNN with real backbone cost, with as many
// 64-channel 3×3 convolutions (58 MFLOP an image each, at least two) as
// make embedding images take at least d on this machine's two threads,
// timed here: a test that must kill a worker mid-shard, or cancel a pass
// mid-scan, must not depend on how fast the CPU is (AVX-512 ran a
// two-layer model's 4,000 images before a heartbeat).
func heavyModelLasting(t *testing.T, images int, d time.Duration) []byte {
	const convs, batch = 2, 32
	model := cnn(t, convs)
	sess, err := ortrun.NewSession("calibrate", model, []string{"image"}, []string{"features"}, ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	in := ortrun.Tensor{Shape: []int64{batch, 1, 28, 28}, Floats: make([]float32, batch*28*28)}
	best := time.Duration(math.MaxInt64)
	for range 3 {
		start := time.Now()
		if _, err := sess.Run(in); err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(start))
	}
	perLayer := best / batch / convs // per image
	layers := int(d/(perLayer*time.Duration(images))) + 1
	layers = max(convs, min(layers, 64))
	t.Logf("heavy model: %v an image for %d layers; %d layers for %d images to take %v", best/batch, convs, layers, images, d)
	return cnn(t, layers)
}

// cnn is the CNN of heavyModelLasting with convs convolutions after the
// first.
func cnn(t *testing.T, convs int) []byte {
	const channels = 64
	rng := rand.New(rand.NewPCG(7, 7))
	weights := func(name string, dims ...int64) onnx.Tensor {
		n, fanIn := int64(1), int64(1)
		for i, d := range dims {
			n *= d
			if i > 0 {
				fanIn *= d
			}
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() / math.Sqrt(float64(fanIn)))
		}
		return onnx.Tensor{Name: name, Dims: dims, Floats: v}
	}
	conv := map[string]any{"kernel_shape": []int64{3, 3}, "pads": []int64{1, 1, 1, 1}}
	g := &onnx.Graph{
		Name:   "heavy",
		Inputs: []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 28, 28}}},
		Outputs: []onnx.Value{
			{Name: "features", Elem: onnx.Float, Shape: []int64{-1, channels}},
			{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, 10}},
		},
		Initializers: []onnx.Tensor{weights("c0", channels, 1, 3, 3), weights("head", channels, 10)},
		Nodes: []onnx.Node{
			{Op: "Conv", Inputs: []string{"image", "c0"}, Outputs: []string{"a0"}, Attrs: conv},
			{Op: "Relu", Inputs: []string{"a0"}, Outputs: []string{"h0"}},
		},
	}
	for l := 1; l <= convs; l++ {
		w := fmt.Sprintf("c%d", l)
		g.Initializers = append(g.Initializers, weights(w, channels, channels, 3, 3))
		g.Nodes = append(g.Nodes,
			onnx.Node{Op: "Conv", Inputs: []string{fmt.Sprintf("h%d", l-1), w}, Outputs: []string{fmt.Sprintf("a%d", l)}, Attrs: conv},
			onnx.Node{Op: "Relu", Inputs: []string{fmt.Sprintf("a%d", l)}, Outputs: []string{fmt.Sprintf("h%d", l)}})
	}
	g.Nodes = append(g.Nodes,
		onnx.Node{Op: "GlobalAveragePool", Inputs: []string{fmt.Sprintf("h%d", convs)}, Outputs: []string{"pooled"}},
		onnx.Node{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"features"}},
		onnx.Node{Op: "MatMul", Inputs: []string{"features", "head"}, Outputs: []string{"logits"}})
	data, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// writeDigits writes n small random-stroke PNGs as an ImageFolder dataset.
func writeDigits(t *testing.T, b *blob.Bucket, prefix string, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < n; i++ {
		img := image.NewGray(image.Rect(0, 0, 28, 28))
		for s := 0; s < 40; s++ {
			img.SetGray(rng.IntN(28), rng.IntN(28), color.Gray{Y: uint8(rng.IntN(256))})
		}
		var buf bytes.Buffer
		png.Encode(&buf, img)
		key := fmt.Sprintf("%s%d/%05d.png", prefix, i%10, i)
		if err := b.WriteAll(context.Background(), key, buf.Bytes(), nil); err != nil {
			t.Fatal(err)
		}
	}
}

// A worker killed mid-shard loses at most one part: the retry on a new
// worker resumes from the last heartbeat, and the finished feature file is
// the same as an uninterrupted run's.
func TestKilledWorkerResumesFromHeartbeat(t *testing.T) {
	c, hostport := devServer(t)
	b, url := fileBucket(t)
	ctx := context.Background()
	const images = 4000
	writeDigits(t, b, "heavy/", images)
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatal(err)
	}
	// The shard outlasts a few heartbeats (every 2 s) on any machine.
	if err := b.WriteAll(ctx, "models/heavy.onnx", heavyModelLasting(t, images, 15*time.Second), nil); err != nil {
		t.Fatal(err)
	}
	// Plan and check the model with the real activities, in process.
	sessions := activities.NewSessions(ortrun.Options{Threads: 2}, ortrun.Options{Threads: 2})
	defer sessions.Close()
	acts := &activities.Activities{Bucket: b, Mem: memory.NewGoAllocator(), Sessions: sessions}
	run := "kill-" + time.Now().UTC().Format("150405.000")
	var plan activities.PlanResult
	runActivity(t, acts, acts.Plan, activities.PlanInput{Run: run, Name: activities.Pool, Dataset: schemas.Dataset{Prefix: "heavy/"}, ShardSize: 1 << 30}, &plan)
	if plan.Shards != 1 || plan.Images != images {
		t.Fatalf("plan: %+v", plan)
	}
	var models activities.CheckModelsResult
	runActivity(t, acts, acts.CheckModels, activities.CheckModelsInput{Target: heavyTarget()}, &models)

	bin := buildBinary(t, "dcd/worker")
	startProc := func() *workerProcess {
		return startWorkerProcess(t, bin, "-address", hostport, "-storage", url, "-threads", "2", "-concurrency", "1")
	}
	first := startProc()
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: run, TaskQueue: workflows.CPUQueue}, workflows.ShardsWorkflow, workflows.ShardsInput{
		Run: run, Dataset: activities.Pool, Model: models.Similarity, First: 0, End: 1, Window: 1,
		BatchSize: 32, PartSize: 256, Heartbeat: 2 * time.Second, Timeout: 10 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Kill the worker once it has committed at least two parts.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if time.Now().After(deadline) {
			t.Fatal("no heartbeat progress within 3 minutes")
		}
		d, err := c.DescribeWorkflowExecution(ctx, run, "")
		if err != nil {
			t.Fatal(err)
		}
		if pa := d.GetPendingActivities(); len(pa) == 1 && pa[0].GetHeartbeatDetails() != nil {
			var p struct{ NextPart int }
			if dc := pa[0].GetHeartbeatDetails(); dc != nil && len(dc.Payloads) > 0 {
				if err := converterFromPayload(dc.Payloads[0], &p); err == nil && p.NextPart >= 2 {
					break
				}
			}
		}
		if d.GetWorkflowExecutionInfo().GetStatus() != 1 { // not running
			err := we.Get(ctx, nil)
			t.Fatalf("shard finished (%v, err %v) before the worker could be killed: make the model heavier", d.GetWorkflowExecutionInfo().GetStatus(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	first.kill()
	startProc()

	var res workflows.ShardsResult
	if err := we.Get(ctx, &res); err != nil {
		t.Fatal(err)
	}
	if res.Images != images || res.Rejects != 0 {
		t.Fatalf("result %+v, want %d images", res, images)
	}
	if res.Resumed < 2*256 || res.Resumed >= images {
		t.Fatalf("resumed from image %d: want the retry to skip the parts committed before the kill", res.Resumed)
	}

	// The stitched file equals an uninterrupted embedding of the same images.
	data, err := b.ReadAll(ctx, activities.ShardKey(run, activities.Pool, 0))
	if err != nil {
		t.Fatal(err)
	}
	shard, err := dataset.ParseShard("shard", data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := features.Load(ctx, b, features.Key(models.Similarity.Spec, shard.Digest()), "features", memory.NewGoAllocator())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.URIs) != images {
		t.Fatalf("feature file has %d rows, want %d", len(got.URIs), images)
	}
	for _, part := range []int{0, 1, images/256 - 1} { // before and after the kill
		first := part * 256
		want := embedDirect(t, b, models.Similarity, shard.Items[first:first+32])
		for i, w := range want {
			if g := got.Data[first*got.Dim+i]; math.Abs(float64(g-w)) > 1e-4*(1+math.Abs(float64(w))) {
				t.Fatalf("part %d value %d: %v, uninterrupted embedding gives %v", part, i, g, w)
			}
		}
	}
}

// workerProcess is a worker binary running for a test.
type workerProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startWorkerProcess starts the worker binary with args. It is killed when
// the test ends, however it ends: a worker left polling the queues with
// this test's bucket would take the activities of the tests after it.
func startWorkerProcess(t *testing.T, bin string, args ...string) *workerProcess {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	// A killed worker leaves the temporary files of its writes in flight.
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &workerProcess{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	return p
}

// kill stops the worker at once, as a crash would, and waits for it to go.
func (p *workerProcess) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// runActivity runs one real activity outside a workflow.
func runActivity(t *testing.T, acts *activities.Activities, fn, in, out any) {
	t.Helper()
	var ts testsuite.WorkflowTestSuite
	ts.SetLogger(quietLogger())
	env := ts.NewTestActivityEnvironment()
	env.RegisterActivity(acts)
	v, err := env.ExecuteActivity(fn, in)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Get(out); err != nil {
		t.Fatal(err)
	}
}

// embedDirect embeds items in one batch, outside Temporal.
func embedDirect(t *testing.T, b *blob.Bucket, m activities.ModelRef, items []dataset.Item) []float32 {
	t.Helper()
	ctx := context.Background()
	model, err := b.ReadAll(ctx, m.Path)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := ortrun.NewSession("direct", model, []string{m.Spec.Input}, m.Spec.Outputs[:1], ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	e := &embed.Embedder{Name: "direct", Session: sess, Spec: m.Spec.Preprocess, BatchSize: len(items)}
	var images []embed.Image
	for _, it := range items {
		images = append(images, embed.Image{URI: it.Key})
	}
	var out []float32
	if _, err := e.Embed(ctx, images, func(ctx context.Context, k string) ([]byte, error) { return b.ReadAll(ctx, k) },
		func(bt embed.Batch) error { out = append(out, bt.Vectors[0]...); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func heavyTarget() schemas.Model {
	return schemas.Model{Path: "models/heavy.onnx", Features: "features", Logits: "logits",
		Preprocess: preprocess.Spec{Channels: 1, Height: 28, Width: 28}.WithDefaults()}
}

func converterFromPayload(p *commonpb.Payload, v any) error {
	return converter.GetDefaultDataConverter().FromPayload(p, v)
}
