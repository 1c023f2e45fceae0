package bench

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/worker"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/devserver"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

// server is the private Temporal dev server the pass and orchestration
// parts share: a free port, its state in a temporary folder.
type server struct {
	dir      string
	hostport string
	client   client.Client
}

func startServer(ctx context.Context, o Options) (*server, error) {
	dir := filepath.Join(o.Dir, "temporal")
	hostport, err := freePort()
	if err != nil {
		return nil, err
	}
	if _, err := devserver.EnsureTemporal(ctx, hostport, dir); err != nil {
		return nil, err
	}
	c, err := client.Dial(client.Options{HostPort: hostport, Logger: devserver.QuietLogger()})
	if err != nil {
		devserver.Stop(dir)
		return nil, fmt.Errorf("bench: %w", err)
	}
	return &server{dir: dir, hostport: hostport, client: c}, nil
}

// server returns the shared server, or starts one that stop stops.
func (o Options) server(ctx context.Context) (*server, func(), error) {
	if o.srv != nil {
		return o.srv, func() {}, nil
	}
	s, err := startServer(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	return s, s.stop, nil
}

func (s *server) stop() {
	s.client.Close()
	devserver.Stop(s.dir)
}

// freePort finds a local port that is free, below 64535 so that the dev
// server's UI port (+1000) is valid too.
func freePort() (string, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("bench: free port: %w", err)
		}
		addr := l.Addr().(*net.TCPAddr)
		l.Close()
		if addr.Port < 64535 && !devserver.Reachable(fmt.Sprintf("127.0.0.1:%d", addr.Port+1000)) {
			return addr.String(), nil
		}
	}
	return "", errors.New("bench: no free port below 64535")
}

// passCase is one pool size of the recurring-pass benchmark, with its
// features stored as float32 or, for storedAs schemas.Float16, float16.
type passCase struct {
	label    string
	rows     int
	storedAs string
}

const (
	passDim   = 384
	passShard = 2000 // rows per shard: the default shards.size
	passK     = 10   // the default selection.k
)

// Pass measures the pool scan of a recurring pass whose features are all
// cached: ShardsWorkflow chains, as DebugPass starts them, over synthetic
// d=384 feature files, on a dev server and a worker process. It reports
// the wall time, the worker's peak RSS, and the shares of time in the k-NN
// scan, in the activities' storage work and in orchestration (no activity
// running). The largest pool is scanned a second time from float16
// features, which halve what the pass reads.
func Pass(ctx context.Context, o Options) ([]Result, error) {
	srv, stop, err := o.server(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()

	cases, queries := []passCase{{"250k", 250_000, ""}, {"1m", 1_000_000, ""}, {"1m_f16", 1_000_000, schemas.Float16}}, 1000
	if o.Quick {
		cases, queries = []passCase{{"20k", 20_000, ""}, {"60k", 60_000, ""}, {"60k_f16", 60_000, schemas.Float16}}, 100
	}
	workerBin, err := o.worker(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(o.Dir, "pass")
	url := "file://" + filepath.ToSlash(dir) + "?create_dir=1"
	bucket, err := store.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	defer bucket.Close()

	ref := activities.ModelRef{Path: "models/similarity.onnx", Spec: features.Spec{
		ModelDigest: "bench", Input: "image", Outputs: []string{"features"}, Columns: []string{"features"},
		Preprocess: preprocess.Spec{Channels: 3, Height: 224, Width: 224},
	}}
	// One pool of cached features per value type, as large as its
	// largest case; a case scans its first shards.
	pools := map[string][]*dataset.Shard{}
	for _, c := range cases {
		if len(pools[c.storedAs])*passShard >= c.rows {
			continue
		}
		start := time.Now()
		spec := ref.Spec
		spec.StoredAs = c.storedAs
		rows := 0
		for _, d := range cases {
			if d.storedAs == c.storedAs {
				rows = max(rows, d.rows)
			}
		}
		shards, err := writePool(ctx, bucket, spec, rows)
		if err != nil {
			return nil, err
		}
		pools[c.storedAs] = shards
		o.logf("pass: wrote %d cached feature shards (%d rows, d=%d, %s) in %s", len(shards), rows, passDim, cmp.Or(c.storedAs, schemas.Float32), time.Since(start).Round(time.Second))
	}

	var out []Result
	for _, c := range cases {
		run := "bench-" + c.label
		n := c.rows / passShard
		if err := writeRun(ctx, bucket, run, pools[c.storedAs][:n], queries); err != nil {
			return out, err
		}
		r := ref
		r.Spec.StoredAs = c.storedAs
		rs, err := passRun(ctx, o, srv, workerBin, url, run, r, n, c)
		if err != nil {
			return out, fmt.Errorf("bench: pass %s: %w", c.label, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// writePool writes rows/passShard shards of cached features (random unit
// vectors) and their rejects markers, and returns the shard manifests.
func writePool(ctx context.Context, b *blob.Bucket, spec features.Spec, rows int) ([]*dataset.Shard, error) {
	mem := memory.NewGoAllocator()
	var shards []*dataset.Shard
	for s := 0; s*passShard < rows; s++ {
		sh := &dataset.Shard{}
		images := make([]embed.Image, passShard)
		for j := range passShard {
			id := int64(s*passShard + j)
			key := fmt.Sprintf("pool/%04d/%06d.jpg", s, id)
			sh.Items = append(sh.Items, dataset.Item{ID: id, Key: key, Label: strconv.Itoa(int(id % 10)), Domain: "clean"})
			images[j] = embed.Image{ID: id, URI: key}
		}
		key := features.Key(spec, sh.Digest())
		rec := features.Record(mem, spec.Columns, embed.Batch{Images: images, Vectors: [][]float32{uniform(uint64(100+s), passShard*passDim)}, Dims: []int{passDim}}, spec.StoredAs)
		err := store.WriteArrow(ctx, b, key, rec.Schema(), mem, rec)
		rec.Release()
		if err == nil {
			err = store.WriteAll(ctx, b, key+".rejects.json", []byte("[]"))
		}
		if err != nil {
			return nil, err
		}
		shards = append(shards, sh)
	}
	return shards, nil
}

// writeRun writes a run's pool shard manifests and its queries.
func writeRun(ctx context.Context, b *blob.Bucket, run string, shards []*dataset.Shard, queries int) error {
	for i, sh := range shards {
		if err := store.WriteAll(ctx, b, activities.ShardKey(run, activities.Pool, i), sh.Marshal()); err != nil {
			return err
		}
	}
	mem := memory.NewGoAllocator()
	images := make([]embed.Image, queries)
	for i := range images {
		images[i] = embed.Image{URI: fmt.Sprintf("e_sample/%04d.jpg", i)}
	}
	rec := features.Record(mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{uniform(7, queries*passDim)}, Dims: []int{passDim}}, "")
	defer rec.Release()
	return store.WriteArrow(ctx, b, activities.RunKey(run, "queries.arrow"), rec.Schema(), mem, rec)
}

// passRun scans one pool on a fresh worker process and measures it.
func passRun(ctx context.Context, o Options, srv *server, workerBin, url, run string, ref activities.ModelRef, n int, c passCase) ([]Result, error) {
	w, err := startWorker(ctx, o, workerBin, srv.hostport, url, run)
	if err != nil {
		return nil, err
	}
	defer w.stop()

	start := time.Now()
	runs, err := runChains(ctx, srv.client, run, n, func(first, end int) workflows.ShardsInput {
		return workflows.ShardsInput{
			Run: run, Dataset: activities.Pool, Model: ref, First: first, End: end,
			Window: 4, BatchSize: 64, K: passK, Heartbeat: 30 * time.Second, Timeout: time.Hour,
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%w (worker log: %s)", err, w.log)
	}
	wall := time.Since(start)
	hwm, err := w.peakRSS()
	if err != nil {
		return nil, err
	}
	t, err := activityTimes(ctx, srv.client, runs)
	if err != nil {
		return nil, err
	}
	busy := t.busy()
	orch := max(wall-busy, 0)
	// Four searches run at once, and each one's reads and writes overlap
	// the others' searches: the time some search ran is split between the
	// k-NN and storage as the searches' own times split, summed.
	var search time.Duration
	if t.took > 0 {
		search = time.Duration(float64(busy) * min(float64(t.search)/float64(t.took), 1))
	}
	io := busy - search
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / wall.Seconds() }
	o.logf("pass %s: %d shards in %s (%.1f ms/shard): k-NN %s, storage %s, orchestration %s; %d activities (%d local); worker peak RSS %d MiB",
		c.label, n, wall.Round(time.Millisecond), wall.Seconds()*1e3/float64(n), search.Round(time.Millisecond), io.Round(time.Millisecond), orch.Round(time.Millisecond), len(t.spans), t.local, hwm>>20)
	name := "pass_cached_" + c.label
	return []Result{
		info(name+"_time", "s", wall.Seconds(), 0),
		info(name+"_knn", "% of time", pct(search), 0),
		info(name+"_io", "% of time", pct(io), 0),
		budget(name+"_orchestration", "% of time", pct(orch), 5),
		budget(name+"_peak_rss", "MiB", float64(hwm)/(1<<20), 1024),
	}, nil
}

// chain is a ShardsWorkflow chain: its id and the id of its first run.
type chain struct{ id, firstRun string }

// runChains starts ShardsWorkflow chains over n shards as DebugPass does
// (ChildShards each, ChildWindow at a time), waits for them, and returns
// every chain's first run (a WorkflowRun's own id moves to the last run of
// the chain once Get has followed it).
func runChains(ctx context.Context, c client.Client, run string, n int, input func(first, end int) workflows.ShardsInput) ([]chain, error) {
	var all []chain
	var inFlight []client.WorkflowRun
	wait := func(r client.WorkflowRun) error {
		var res workflows.ShardsResult
		return r.Get(ctx, &res)
	}
	for first := 0; first < n; first += workflows.ChildShards {
		if len(inFlight) == workflows.ChildWindow {
			if err := wait(inFlight[0]); err != nil {
				return nil, err
			}
			inFlight = inFlight[1:]
		}
		id := fmt.Sprintf("%s/%s/%d", run, activities.Pool, first/workflows.ChildShards)
		r, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.ShardsWorkflow, input(first, min(first+workflows.ChildShards, n)))
		if err != nil {
			return nil, fmt.Errorf("bench: start %s: %w", id, err)
		}
		all = append(all, chain{r.GetID(), r.GetRunID()})
		inFlight = append(inFlight, r)
	}
	for _, r := range inFlight {
		if err := wait(r); err != nil {
			return nil, err
		}
	}
	return all, nil
}

// times are the activities of a pass as its histories record them.
type times struct {
	spans        [][2]time.Time // started, closed
	search, took time.Duration  // TopKShardResult.Search and .Took, summed
	local        int            // local activities among the spans
}

func (t *times) addSearch(r activities.TopKShardResult) {
	t.search += r.Search
	t.took += r.Took
}

// busy is how long at least one activity was running.
func (t times) busy() time.Duration {
	spans := slices.Clone(t.spans)
	slices.SortFunc(spans, func(a, b [2]time.Time) int { return a[0].Compare(b[0]) })
	var total time.Duration
	var cur [2]time.Time
	for i, s := range spans {
		if i > 0 && !s[0].After(cur[1]) {
			if s[1].After(cur[1]) {
				cur[1] = s[1]
			}
			continue
		}
		total += cur[1].Sub(cur[0])
		cur = s
	}
	return total + cur[1].Sub(cur[0])
}

// activityTimes reads every run of each chain (following continue-as-new)
// and collects its activities' start and close times and k-NN time.
func activityTimes(ctx context.Context, c client.Client, chains []chain) (times, error) {
	var t times
	dc := converter.GetDefaultDataConverter()
	for _, chain := range chains {
		runID := chain.firstRun
		for runID != "" {
			it := c.GetWorkflowHistory(ctx, chain.id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
			started := map[int64]time.Time{}
			types := map[int64]string{}
			next := ""
			for it.HasNext() {
				ev, err := it.Next()
				if err != nil {
					return t, fmt.Errorf("bench: history of %s: %w", chain.id, err)
				}
				switch ev.GetEventType() {
				case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
					types[ev.GetEventId()] = ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName()
				case enumspb.EVENT_TYPE_ACTIVITY_TASK_STARTED:
					started[ev.GetEventId()] = ev.GetEventTime().AsTime()
				case enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
					a := ev.GetActivityTaskCompletedEventAttributes()
					t.spans = append(t.spans, [2]time.Time{started[a.GetStartedEventId()], ev.GetEventTime().AsTime()})
					switch types[a.GetScheduledEventId()] {
					case "TopKShard":
						var r activities.TopKShardResult
						if err := dc.FromPayloads(a.GetResult(), &r); err != nil {
							return t, fmt.Errorf("bench: TopKShard result: %w", err)
						}
						t.addSearch(r)
					case "EmbedShard":
						var r activities.EmbedShardResult
						if err := dc.FromPayloads(a.GetResult(), &r); err != nil {
							return t, fmt.Errorf("bench: EmbedShard result: %w", err)
						}
						if r.TopK != nil {
							t.addSearch(*r.TopK)
						}
					}
				case enumspb.EVENT_TYPE_MARKER_RECORDED:
					// A local activity: its marker is written when the
					// workflow task that ran it completes, often with
					// others, so its span is the one its result reports.
					a := ev.GetMarkerRecordedEventAttributes()
					if a.GetMarkerName() != "LocalActivity" || a.GetFailure() != nil {
						continue
					}
					var data struct{ ActivityType string }
					if err := dc.FromPayloads(a.GetDetails()["data"], &data); err != nil || data.ActivityType != "EmbedShard" {
						continue
					}
					var r activities.EmbedShardResult
					if err := dc.FromPayloads(a.GetDetails()["result"], &r); err != nil {
						return t, fmt.Errorf("bench: EmbedShard local result: %w", err)
					}
					if r.TopK != nil {
						t.spans = append(t.spans, [2]time.Time{r.TopK.Started, r.TopK.Started.Add(r.TopK.Took)})
						t.addSearch(*r.TopK)
						t.local++
					}
				case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
					next = ev.GetWorkflowExecutionContinuedAsNewEventAttributes().GetNewExecutionRunId()
				}
			}
			runID = next
		}
	}
	return t, nil
}

// proc is a worker process started for one measurement.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// worker returns the worker binary: Options.Worker, or one built into Dir.
func (o Options) worker(ctx context.Context) (string, error) {
	if o.Worker != "" {
		return o.Worker, nil
	}
	bin := filepath.Join(o.Dir, "worker")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "dcd/worker")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("bench: build the worker (give -worker bin/worker, or run from the dcd checkout): %v\n%s", err, out)
	}
	return bin, nil
}

// startWorker runs the worker binary against the server and bucket, and
// waits until it polls.
func startWorker(ctx context.Context, o Options, bin, hostport, url, name string) (*proc, error) {
	logPath := filepath.Join(o.Dir, "worker-"+name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer logf.Close()
	args := []string{"-address", hostport, "-storage", url, "-queues", "cpu,gpu"}
	if o.Threads > 0 {
		args = append(args, "-threads", strconv.Itoa(o.Threads))
	}
	if o.WorkerProfile != "" {
		args = append(args, "-cpuprofile", o.WorkerProfile+"-"+name)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	lib := o.ORTLib
	if lib == "" {
		lib = os.Getenv("DCD_ORT_LIB")
	}
	cmd.Env = os.Environ()
	if lib != "" {
		cmd.Env = append(cmd.Env, "DCD_ORT_LIB="+lib)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start worker: %w", err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	deadline := time.After(60 * time.Second)
	for {
		data, _ := os.ReadFile(logPath)
		if strings.Contains(string(data), "polling") {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("bench: worker exited at once:\n%s", data)
		case <-deadline:
			p.stop()
			return nil, fmt.Errorf("bench: worker not polling after 60s:\n%s", data)
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// peakRSS is the process's high-water resident set (VmHWM), in bytes.
func (p *proc) peakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("bench: worker peak RSS: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("bench: worker peak RSS: no VmHWM in /proc status")
}

// stop asks the worker to stop, and kills it after 10 s.
func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// Orchestration measures what Temporal costs per pool shard: pool scans
// of 2,000 shards (ShardsWorkflow chains as DebugPass starts them, K > 0)
// whose activities return at once, on the dev server with an in-process
// worker registering no-op activities under the real names. It runs twice:
// every shard cached (searched in local activities after the first ones),
// and every shard new (EmbedShard embeds and searches it: one activity).
func Orchestration(ctx context.Context, o Options) ([]Result, error) {
	srv, stop, err := o.server(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()
	n := 2000
	if o.Quick {
		n = 200
	}
	var workers []worker.Worker
	defer func() {
		for _, w := range workers {
			w.Stop()
		}
	}()
	for _, q := range []string{workflows.CPUQueue, workflows.GPUQueue} {
		w := worker.New(srv.client, q, worker.Options{MaxConcurrentActivityExecutionSize: 2})
		if q == workflows.CPUQueue {
			w.RegisterWorkflow(workflows.ShardsWorkflow)
		}
		for name, fn := range noopActivities {
			w.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name})
		}
		if err := w.Start(); err != nil {
			return nil, fmt.Errorf("bench: start worker: %w", err)
		}
		workers = append(workers, w)
	}
	var out []Result
	for _, kind := range []string{"cached", "new"} {
		run := fmt.Sprintf("bench-%s-%d", kind, time.Now().UnixNano())
		start := time.Now()
		_, err = runChains(ctx, srv.client, run, n, func(first, end int) workflows.ShardsInput {
			return workflows.ShardsInput{
				Run: run, Dataset: activities.Pool, First: first, End: end,
				Window: 4, BatchSize: 64, K: passK, Heartbeat: 30 * time.Second, Timeout: time.Hour,
			}
		})
		if err != nil {
			return out, err
		}
		wall := time.Since(start)
		o.logf("orchestration: %d no-op %s shards in %s", n, kind, wall.Round(time.Millisecond))
		out = append(out, budget(fmt.Sprintf("orchestration_%s_%d_shards", kind, n), "ms/shard", wall.Seconds()*1e3/float64(n), 25))
	}
	return out, nil
}

// noopActivities stand in for the pool scan's activities, under their
// registered names. EmbedShard finds the shard cached (and searches it)
// unless the run's name says the shards are new.
var noopActivities = map[string]any{
	"EmbedShard": func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		if strings.HasPrefix(in.Run, "bench-new-") {
			if in.CachedOnly {
				return activities.EmbedShardResult{}, nil
			}
			return activities.EmbedShardResult{Images: passShard, TopK: &activities.TopKShardResult{}}, nil
		}
		return activities.EmbedShardResult{Cached: true, Images: passShard, TopK: &activities.TopKShardResult{}}, nil
	},
	"TopKShard": func(ctx context.Context, in activities.TopKShardInput) (activities.TopKShardResult, error) {
		return activities.TopKShardResult{}, nil
	},
}
