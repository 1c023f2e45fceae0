package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	failurepb "go.temporal.io/api/failure/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"gopkg.in/yaml.v3"

	"dcd/activities"
	"dcd/internal/embed"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

func testCLI() (*cli, *bytes.Buffer, *bytes.Buffer) {
	var out, errOut bytes.Buffer
	return &cli{g: globals{address: "127.0.0.1:7233", namespace: "default"}, stdout: &out, stderr: &errOut}, &out, &errOut
}

// exitStatus is the status realMain would give err.
func exitStatus(err error) int {
	e, _, _ := testCLI()
	return e.exitCode(err)
}

// run calls realMain with a dialer that records the globals and fails.
func run(t *testing.T, args ...string) (code int, stdout, stderr string, dialed *globals) {
	t.Helper()
	old := dialFunc
	t.Cleanup(func() { dialFunc = old })
	dialFunc = func(g globals) (client.Client, error) {
		dialed = &g
		return nil, errors.New("no server in unit tests")
	}
	t.Setenv("TEMPORAL_ADDRESS", "")
	t.Setenv("TEMPORAL_NAMESPACE", "")
	t.Setenv("TEMPORAL_UI_URL", "")
	var out, errOut bytes.Buffer
	code = realMain(context.Background(), args, &out, &errOut, false)
	return code, out.String(), errOut.String(), dialed
}

func TestUsage(t *testing.T) {
	code, _, stderr, _ := run(t)
	if code != 2 {
		t.Errorf("no arguments: exit %d, want 2", code)
	}
	for _, c := range []string{"run", "status", "result", "cancel", "schedule create", "schedule list",
		"schedule describe", "schedule trigger", "schedule delete", "dev", "demo"} {
		if !strings.Contains(stderr, "\n  "+c+" ") && !strings.Contains(stderr, "\n  "+c+"\n") {
			t.Errorf("usage lacks %q:\n%s", c, stderr)
		}
	}
	for _, line := range strings.Split(stderr, "\n") {
		if n := utf8.RuneCountInString(strings.ReplaceAll(line, "\t", "    ")); n > 100 {
			t.Errorf("usage line of %d columns, wider than a terminal: %q", n, line)
		}
	}
	// The list's synopses are the commands' own (bench's cut short).
	for _, c := range commands {
		if c.about == "" || c.name == "help" {
			continue
		}
		_, stdout, stderr, _ := run(t, append(strings.Fields(c.name), "-h")...)
		first, _, _ := strings.Cut(stdout+stderr, "\n")
		args, cut := strings.CutSuffix(c.args, " [...]")
		first = strings.TrimSpace(first)
		if want := strings.TrimSpace("Usage: starter " + c.name + " " + args); first != want && !(cut && strings.HasPrefix(first, want)) {
			t.Errorf("%s -h: %q, but the commands' list shows %q", c.name, first, want)
		}
	}
	code, stdout, _, _ := run(t, "help")
	if code != 0 || !strings.Contains(stdout, "Commands:") {
		t.Errorf("help: exit %d, %q", code, stdout)
	}
	if code, _, stderr, _ := run(t, "frobnicate"); code != 2 || !strings.Contains(stderr, `starter: unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", code, stderr)
	}
	if code, _, _, _ := run(t, "status", "-h"); code != 0 {
		t.Errorf("status -h: exit %d, want 0", code)
	}
	if code, _, _, _ := run(t, "status", "-bogus", "X"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	for _, c := range []struct {
		args []string
		bad  string
	}{
		{[]string{"bench", "-parts", "knn,foo"}, `"foo"`},
		{[]string{"bench", "-ep", "gpu"}, `"gpu"`},
	} {
		if code, _, stderr, _ := run(t, c.args...); code != 2 || !strings.Contains(stderr, c.bad) {
			t.Errorf("%q: exit %d, %q; want 2 naming %s", c.args, code, stderr, c.bad)
		}
	}
}

func TestGlobalFlagsBeforeAndAfter(t *testing.T) {
	for _, args := range [][]string{
		{"-address", "h:1", "-namespace", "ns", "status", "RUN"},
		{"status", "RUN", "-address", "h:1", "-namespace", "ns"},
		{"-namespace", "ns", "status", "-address", "h:1", "RUN"},
		{"schedule", "-address", "h:1", "-namespace", "ns", "describe", "S"},
		{"schedule", "describe", "-address", "h:1", "S", "-namespace", "ns"},
	} {
		code, _, stderr, dialed := run(t, args...)
		if dialed == nil || dialed.address != "h:1" || dialed.namespace != "ns" {
			t.Errorf("%q: dialed %+v", args, dialed)
		}
		if code != 1 || !strings.HasPrefix(stderr, "starter: no server in unit tests") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
	code, _, _, dialed := run(t, "status")
	if code != 2 || dialed != nil {
		t.Errorf("status without RUN: exit %d, dialed %v", code, dialed)
	}
}

func TestEnvDefaults(t *testing.T) {
	t.Setenv("TEMPORAL_ADDRESS", "env:7")
	t.Setenv("TEMPORAL_NAMESPACE", "envns")
	if g := defaultGlobals(); g.address != "env:7" || g.namespace != "envns" {
		t.Errorf("defaultGlobals = %+v", g)
	}
}

func TestParseRun(t *testing.T) {
	e, _, _ := testCLI()
	a, err := parseRun(e, []string{"-config", "c.yaml", "-id", "x1", "-wait", "-storage", "s3://pool", "-reread"})
	if err != nil || a != (runArgs{config: "c.yaml", id: "x1", wait: true, storage: "s3://pool", reread: true}) {
		t.Errorf("parseRun = %+v, %v", a, err)
	}
	// IDs are storage keys' folders: no nesting, climbing or escaping, nor
	// longer than a folder's name; nor flags to the commands that take them.
	for _, args := range [][]string{{}, {"-wait"}, {"-config", "c.yaml", "extra"},
		{"-config", "c.yaml", "-id", "a/b"}, {"-config", "c.yaml", "-id", ".."}, {"-config", "c.yaml", "-id", "exp%1"},
		{"-config", "c.yaml", "-id", "-wait"}, {"-config", "c.yaml", "-id", strings.Repeat("x", 201)},
		{"-config", "c.yaml", "-wait", "-storage", "s3://b/dcd"}} {
		e, _, _ := testCLI()
		if _, err := parseRun(e, args); exitStatus(err) != 2 {
			t.Errorf("parseRun(%q): err %v, want a usage error", args, err)
		}
	}
}

func TestParseResult(t *testing.T) {
	for _, args := range [][]string{{"-json", "R"}, {"R", "-json"}, {"-storage", "mem://", "-json", "R"}} {
		e, _, _ := testCLI()
		a, err := parseResult(e, args)
		if err != nil || a.id != "R" || !a.json {
			t.Errorf("parseResult(%q) = %+v, %v", args, a, err)
		}
	}
	// A bucket URL with a folder, which the worker and report refuse,
	// is refused here too, not shown with paths under it.
	for _, args := range [][]string{{}, {"R", "S"}, {"-json"}, {"-storage", "gs://b/dcd", "R"}} {
		e, _, _ := testCLI()
		if _, err := parseResult(e, args); exitStatus(err) != 2 {
			t.Errorf("parseResult(%q): err %v, want a usage error", args, err)
		}
	}
}

func TestParseDemo(t *testing.T) {
	e, _, _ := testCLI()
	a, err := parseDemo(e, []string{"-corruption", "fog", "-seed", "7", "-small", "-no-wait"})
	if err != nil {
		t.Fatal(err)
	}
	o := demoOptions(a)
	if o.Corruption != "fog" || o.Seed != 7 || o.Train != 3000 || o.Pool != 6000 || o.Test != 2000 || o.Heldout != 600 || !a.noWait {
		t.Errorf("demo options %+v from %+v", o, a)
	}
	e, _, _ = testCLI()
	a, err = parseDemo(e, nil)
	if err != nil || a.corruption != "blur" || a.seed != 1 || a.small || a.noWait {
		t.Errorf("defaults = %+v, %v", a, err)
	}
	if o := demoOptions(a); o.Train != 0 || o.Pool != 0 {
		t.Errorf("full-size demo sets sizes: %+v", o)
	}
	// An unknown shift is a usage error, before any server starts.
	if code, _, stderr, dialed := run(t, "demo", "-corruption", "foo"); code != 2 || dialed != nil || !strings.Contains(stderr, "blur") {
		t.Errorf("demo -corruption foo: exit %d, %q; want 2 listing the known ones, before dialing", code, stderr)
	}
	// A bucket URL with a password, which the worker refuses, is refused
	// before a worker is started with it on its command line.
	for _, cmd := range []string{"demo", "dev"} {
		if code, _, stderr, dialed := run(t, cmd, "-storage", "s3://u:S3CR3T@b"); code != 2 || dialed != nil || strings.Contains(stderr, "S3CR3T") {
			t.Errorf("%s -storage with a password: exit %d, %q; want 2, before anything starts", cmd, code, stderr)
		}
	}
	// Seed 0 would be seed 1's world under another name.
	if code, _, stderr, dialed := run(t, "demo", "-seed", "0"); code != 2 || dialed != nil || !strings.Contains(stderr, "-seed") {
		t.Errorf("demo -seed 0: exit %d, %q; want 2, before dialing", code, stderr)
	}
}

func TestParseDev(t *testing.T) {
	e, _, _ := testCLI()
	a, err := parseDev(e, []string{"-stop", "-storage", "mem://"})
	if err != nil || !a.stop || a.storage != "mem://" {
		t.Errorf("parseDev = %+v, %v", a, err)
	}
	t.Setenv("DCD_STORAGE", "file:///x")
	e, _, _ = testCLI()
	if a, _ := parseDev(e, nil); a.storage != "file:///x" {
		t.Errorf("storage default %q, want DCD_STORAGE", a.storage)
	}
}

func testConfig() schemas.Config {
	sim := schemas.Model{Path: "models/sim.onnx", Features: "feat", Preprocess: preprocess.Spec{Channels: 3, Height: 224, Width: 224,
		Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}}}
	return schemas.Config{
		Name:    "demo-blur",
		Seed:    3,
		Classes: []string{"0", "1", "2", "true", "null", "1e3"},
		Target: schemas.Model{Path: "demo/m.onnx", Input: "image", Features: "features", Logits: "logits",
			Preprocess: preprocess.Spec{Layout: "NCHW", Channels: 1, Height: 28, Width: 28}},
		Similarity: &sim,
		Data: schemas.Data{
			Train:        schemas.Dataset{Prefix: "demo/train/"},
			Test:         schemas.Dataset{Prefix: "demo/test/"},
			ErrorSample:  schemas.Dataset{Prefix: "demo/error_sample/"},
			ErrorHeldout: schemas.Dataset{Prefix: "demo/error_heldout/"},
			Pool:         schemas.Dataset{Manifest: "demo/pool/manifest.csv"},
		},
		Selection: schemas.Selection{K: 10, ErrorDomain: "blur"},
		Retrain:   schemas.Retrain{Lambda: 0.01, Iters: 300},
		Timeouts:  schemas.Timeouts{Heartbeat: schemas.Duration(45 * time.Second)},
	}.WithDefaults()
}

// The demo rewrites its config on every run (another seed, -small), but
// an edited one, as the demo invites, is kept beside it, each edit under
// a name of its own; one the demo wrote is replaced.
func TestDemoConfigKeepsEdits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "demo-blur.yaml")
	cfg, other := testConfig(), testConfig()
	other.Selection.K = 7
	for i, c := range []struct {
		cfg  schemas.Config
		edit string
		kept string
	}{
		{cfg, "", ""},                 // none there
		{other, "", ""},               // the demo's own
		{cfg, "  k: 5\n", "~1~"},      // an edit
		{cfg, "", ""},                 // the demo's own again
		{other, "# my note\n", "~2~"}, // another edit, beside the first
	} {
		if c.edit != "" {
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(c.edit)
			f.Close()
		}
		before, _ := os.ReadFile(path)
		kept, err := writeDemoConfig(path, c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]string{true: path + ".~" + strings.Trim(c.kept, "~") + "~"}[c.kept != ""]; kept != want {
			t.Errorf("write %d: kept %q, want %q", i, kept, want)
		}
		if kept != "" {
			if b, _ := os.ReadFile(kept); !bytes.Equal(b, before) {
				t.Errorf("write %d: %s holds %q, want the edited file", i, kept, b)
			}
		}
		if got, err := schemas.LoadConfig(path); err != nil || got.Selection.K != c.cfg.Selection.K {
			t.Errorf("write %d: %s: k %d, %v; want the demo's config, k %d", i, path, got.Selection.K, err, c.cfg.Selection.K)
		}
	}
}

func TestConfigYAMLRoundTrip(t *testing.T) {
	cfg := testConfig()
	path := filepath.Join(t.TempDir(), "sub", "demo-blur.yaml")
	if err := writeConfig(path, cfg); err != nil {
		t.Fatal(err)
	}
	got, err := schemas.LoadConfig(path)
	if err != nil {
		b, _ := os.ReadFile(path)
		t.Fatalf("LoadConfig: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(got, cfg) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, cfg)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{"# DCD pass config", "name: demo-blur\n", "heartbeat: 45s\n", "error_sample:\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("YAML lacks %q:\n%s", want, b)
		}
	}
}

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("name: x\nclasses: [a]\n"), 0o644)
	code, _, stderr, dialed := run(t, "run", "-config", bad)
	if code != 2 || !strings.Contains(stderr, "classes: needs at least 2") || dialed != nil {
		t.Errorf("invalid config: exit %d, %q", code, stderr)
	}
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("nmae: x\n"), 0o644)
	if code, _, stderr, _ := run(t, "run", "-config", typo); code != 2 || !strings.Contains(stderr, `unknown field "nmae" (misspelled, or at the wrong level?)`) || strings.Contains(stderr, "schemas.") {
		t.Errorf("misspelt key: exit %d, %q", code, stderr)
	}
	code, _, stderr, _ = run(t, "run", "-config", filepath.Join(dir, "nonexistent.yaml"))
	if code != 1 || !strings.Contains(stderr, "no such file") {
		t.Errorf("missing file: exit %d, %q", code, stderr)
	}
	// A variant the file's compare leaves out is refused here, where the
	// user's file is read (a pass does not refuse it: a schedule's config
	// stored before may).
	left := testConfig()
	left.Selection.Variants = map[string]schemas.SelectionVariant{"wide": {K: 20}}
	left.Compare = []string{schemas.MethodNone, schemas.MethodDCD}
	leftOut := filepath.Join(dir, "left-out.yaml")
	if err := writeConfig(leftOut, left); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr, _ := run(t, "run", "-config", leftOut); code != 2 || !strings.Contains(stderr, `selection.variants.wide: is defined but compare leaves it out: add "dcd:wide"`) {
		t.Errorf("a variant not compared: exit %d, %q", code, stderr)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := writeConfig(good, testConfig()); err != nil {
		t.Fatal(err)
	}
	code, _, stderr, dialed = run(t, "run", "-config", good)
	if code != 1 || dialed == nil {
		t.Errorf("valid config: exit %d, %q; want a dial attempt", code, stderr)
	}
}

func TestPassIDAndURL(t *testing.T) {
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.FixedZone("x", 3600))
	if got := passID("demo-blur", now); got != "demo-blur-20250304-040607" {
		t.Errorf("passID = %q", got)
	}
	g := globals{address: "127.0.0.1:7233", namespace: "default"}
	if got := workflowURL(g, "a b"); got != "http://127.0.0.1:8233/namespaces/default/workflows/a%20b" {
		t.Errorf("workflowURL = %q", got)
	}
	// A deployment's UI is where TEMPORAL_UI_URL says (compose's: 8080).
	g.ui = "http://localhost:8080/"
	if got := workflowURL(g, "r"); got != "http://localhost:8080/namespaces/default/workflows/r" {
		t.Errorf("workflowURL with TEMPORAL_UI_URL = %q", got)
	}
}

func TestStatusLine(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	p := workflows.Progress{Phase: "scan pool", Started: start, ShardsTotal: 40, ShardsDone: 10, Images: 2000,
		Rejects: 1, CachedShards: 3, Running: []string{"r/pool/0", "r/pool/1", "r/pool-target/0"}, Again: []string{"r/pool-target/0"}}
	// The pool embedded again with the target rejects what the scan did:
	// its images count, its rejects do not.
	p = withChildren(p, map[string]workflows.ShardsResult{"r/pool/0": {Shards: 5, Images: 1000, Rejects: 2, Cached: 1}, "r/pool/1": {Shards: 1, Images: 100},
		"r/pool-target/0": {Shards: 1, Images: 100, Rejects: 2}})
	got := statusLine(p, start.Add(100*time.Second), -1)
	want := "scan pool     | shards 17/40 | 3200 images | 32 images/s since start | 3 rejects | 4 cached shards | 1m40s"
	if got != want {
		t.Errorf("statusLine =\n%q\nwant\n%q", got, want)
	}
	if got := statusLine(p, start.Add(100*time.Second), 7.4); !strings.Contains(got, "| 7 images/s |") {
		t.Errorf("statusLine of a watch = %q, want its rate of late", got)
	}
	got = statusLine(workflows.Progress{Phase: "plan", Started: start}, start, -1)
	if !strings.Contains(got, "shards 0/?") || !strings.Contains(got, "0 images/s") {
		t.Errorf("statusLine before planning = %q", got)
	}
	// In the comparison, where each method is.
	got = statusLine(workflows.Progress{Phase: "compare", Started: start, Methods: map[string]string{"random": "embed", "dcd": "retrain", "none": "done"}}, start, -1)
	if !strings.HasSuffix(got, " | dcd retrain, none done, random embed") {
		t.Errorf("statusLine in the comparison = %q", got)
	}
}

// A watch's images/s is of its last ten seconds: a pass that embedded
// fast and then retries a step soon shows none, not its falling average.
func TestRecentRate(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var r recentRate
	want := map[int]float64{0: -1, 4: -1, 5: 1000, 6: 1000, 11: 500, 16: 0, 18: 10, 150: -1, 155: 20}
	for s := range 156 {
		if 18 < s && s < 150 {
			continue // a silence: no line answered
		}
		images := 1000 * min(s, 6) // embeds for 6 s, then retries a step
		if s == 17 {
			images -= 100 // a chain did not answer
		}
		if s >= 18 {
			images += 100
		}
		if s == 155 {
			images += 100 // 100 in the 5 s since the silence
		}
		got := r.add(start.Add(time.Duration(s)*time.Second), images)
		if w, ok := want[s]; ok && got != w {
			t.Errorf("at %ds, %d images: %v images/s, want %v", s, images, got, w)
		}
		if s == 17 && got != 0 {
			t.Errorf("at %ds, a chain's images left out: %v images/s, want 0", s, got)
		}
	}
}

func TestWriteResult(t *testing.T) {
	prec := 0.99
	res := workflows.PassResult{
		RunID: "demo-blur-1",
		Eval: activities.Eval{RunID: "demo-blur-1", TestImages: 10000, HeldoutImages: 2000, Methods: []activities.Method{
			{Method: "none", TestAccuracy: 0.975, HeldoutAccuracy: 0.121, WallSeconds: 0.4},
			{Method: "dcd", TestAccuracy: 0.9731, HeldoutAccuracy: 0.742, DebugTrainSize: 615, SelectionPrecision: &prec, WallSeconds: 12.34,
				Model: "runs/demo-blur-1/methods/dcd/model.onnx"},
		}},
		EvalKey: "runs/demo-blur-1/eval.json", ReportKey: "runs/demo-blur-1/report.html", RejectsKey: "runs/demo-blur-1/rejects.csv",
		Rejects: 2, SetRejects: map[string]int{activities.ErrorHeldout: 1},
	}
	// The files are where the table says (else it says they are not).
	dir := t.TempDir()
	for _, k := range []string{res.EvalKey, res.ReportKey, res.RejectsKey, res.Eval.Methods[1].Model} {
		p := filepath.Join(dir, filepath.FromSlash(k))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	writeResult(&b, res, "file://"+dir+"?create_dir=1")
	want := strings.ReplaceAll(`pass demo-blur-1

method | test acc | E_heldout acc | debug-train size | selection precision | wall time
-------+----------+---------------+------------------+---------------------+----------
none   | 0.975    | 0.121         | 0                | -                   | 0.4 s
dcd    | 0.973    | 0.742         | 615              | 0.990               | 12.3 s

10000 test images, 2000 E_heldout images; 2 pool images rejected (not read or not decoded), 1 E_heldout image left out (not read or not decoded)
(rejects.csv says why; images that could not be read and now can are read again by `+"`starter run -reread`"+`;
 one that did not decode is decoded again when its version changes: a manifest's version column, a prefix's listing)

storage file:///work/.dcd/storage?create_dir=1
  eval.json    runs/demo-blur-1/eval.json               /work/.dcd/storage/runs/demo-blur-1/eval.json
  report.html  runs/demo-blur-1/report.html             /work/.dcd/storage/runs/demo-blur-1/report.html
  rejects.csv  runs/demo-blur-1/rejects.csv             /work/.dcd/storage/runs/demo-blur-1/rejects.csv
  dcd model    runs/demo-blur-1/methods/dcd/model.onnx  /work/.dcd/storage/runs/demo-blur-1/methods/dcd/model.onnx
`, "/work/.dcd/storage", dir)
	if b.String() != want {
		t.Errorf("writeResult =\n%s\nwant\n%s", b.String(), want)
	}

	// Read with storage other than the workers' (its default, under
	// another working directory), the paths are said not found, and
	// -storage suggested.
	b.Reset()
	writeResult(&b, res, "file://"+filepath.Join(dir, "elsewhere")+"?create_dir=1")
	if !strings.Contains(b.String(), "/elsewhere/runs/demo-blur-1/eval.json (not found)\n") ||
		!strings.Contains(b.String(), "files not found: is file://"+filepath.Join(dir, "elsewhere")+"?create_dir=1 the bucket the pass's workers wrote to? Give theirs with -storage URL (or DCD_STORAGE)\n") {
		t.Errorf("files not where storage says:\n%s", b.String())
	}

	b.Reset()
	writeResult(&b, res, "s3://bucket?region=us-east-1&endpoint=http://x&token=SECRET")
	if !strings.Contains(b.String(), "storage s3://bucket?region=us-east-1&endpoint=http://x\n") || strings.Contains(b.String(), "SECRET") ||
		!strings.Contains(b.String(), "  eval.json    runs/demo-blur-1/eval.json\n") {
		t.Errorf("s3 storage:\n%s", b.String())
	}

	// A model that could not be exported says why, in place of its path.
	res.Eval.Methods[1].Model, res.Eval.Methods[1].ModelError = "", "models/t.onnx with this head: node If has subgraphs"
	b.Reset()
	writeResult(&b, res, "file:///work/.dcd/storage")
	if !strings.Contains(b.String(), "dcd model    not exported: models/t.onnx with this head: node If has subgraphs\n") {
		t.Errorf("an export that failed:\n%s", b.String())
	}
}

// localPath names the file fileblob wrote a key to, whatever the URL's
// spelling: a prefix without its "/", a path relative to the working
// directory.
func TestLocalPath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	ctx := context.Background()
	for _, u := range []string{
		"file://" + dir + "/a?create_dir=1",
		"file://" + dir + "/b?create_dir=1&prefix=p/",
		"file://" + dir + "/c?create_dir=1&prefix=dcd",
		"file://./d?create_dir=1",
	} {
		b, err := store.Open(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.WriteAll(ctx, b, "runs/x/eval.json", []byte("{}")); err != nil {
			t.Fatal(err)
		}
		b.Close()
		got, ok := localPath(u, "runs/x/eval.json")
		if _, err := os.Stat(got); !ok || err != nil || !filepath.IsAbs(got) {
			t.Errorf("localPath(%q) = %q, %v: %v (want the file the bucket wrote, absolute)", u, got, ok, err)
		}
	}
	if _, ok := localPath("mem://", "runs/x/eval.json"); ok {
		t.Error("localPath of mem:// is a path")
	}
}

func TestFailureMessage(t *testing.T) {
	err := fmt.Errorf("workflow execution error: %w", temporal.NewNonRetryableApplicationError("config: name: must be set", "InvalidConfig", nil))
	if got := failureMessage(err); got != "config: name: must be set" {
		t.Errorf("failureMessage = %q", got)
	}
	if got := failureMessage(errors.New("plain")); got != "plain" {
		t.Errorf("failureMessage = %q", got)
	}
	// An activity's error with its cause, as the client gets it back from
	// the server: each cause a nested failure. The message that names the
	// command is shown, not its cause's "exit status 3".
	cause := exec.Command("sh", "-c", "exit 3").Run()
	sent := temporal.NewNonRetryableApplicationError(`retrain.trainer.command "sh" exited with status 3`, "TrainerFailed", cause)
	fc := temporal.GetDefaultFailureConverter()
	got := fc.FailureToError(fc.ErrorToFailure(sent))
	if msg := failureMessage(fmt.Errorf("workflow execution error: %w", got)); msg != `retrain.trainer.command "sh" exited with status 3` {
		t.Errorf("failureMessage = %q, want the trainer's command named", msg)
	}
}

// Bad input found by an activity is not named after it: CheckApart, a
// local activity, gives no name, and CheckTrainApart's check is the same.
func TestFailureMessageBadInput(t *testing.T) {
	fc := temporal.GetDefaultFailureConverter()
	sent := fc.ErrorToFailure(temporal.NewNonRetryableApplicationError("data.train: image a.png is also in data.error_heldout", activities.InvalidInput, nil))
	f := &failurepb.Failure{Message: "activity error", Cause: sent, FailureInfo: &failurepb.Failure_ActivityFailureInfo{
		ActivityFailureInfo: &failurepb.ActivityFailureInfo{ActivityType: &commonpb.ActivityType{Name: "CheckTrainApart"}, ActivityId: "7"}}}
	if msg := failureMessage(fmt.Errorf("workflow execution error: %w", fc.FailureToError(f))); msg != "data.train: image a.png is also in data.error_heldout" {
		t.Errorf("failureMessage = %q, want the bad input's message alone", msg)
	}
	// One that names no field keeps the step's name.
	sent = fc.ErrorToFailure(temporal.NewNonRetryableApplicationError("target model gives 4 values per image", activities.InvalidInput, nil))
	f.Cause = sent
	if msg := failureMessage(fmt.Errorf("workflow execution error: %w", fc.FailureToError(f))); !strings.HasPrefix(msg, "activity CheckTrainApart: ") {
		t.Errorf("failureMessage = %q, want the step named", msg)
	}
}

// A pass failed by a method's step wrote the others' eval.json; one failed
// elsewhere (planning) wrote none, and no hint to look for one is given.
func TestMethodFailed(t *testing.T) {
	fc := temporal.GetDefaultFailureConverter()
	failed := func(activityID string) error {
		f := &failurepb.Failure{Message: "activity error", Cause: fc.ErrorToFailure(errors.New("boom")), FailureInfo: &failurepb.Failure_ActivityFailureInfo{
			ActivityFailureInfo: &failurepb.ActivityFailureInfo{ActivityType: &commonpb.ActivityType{Name: "Retrain"}, ActivityId: activityID}}}
		return fmt.Errorf("workflow execution error: %w", fc.FailureToError(f))
	}
	if !methodFailed(failed(workflows.MethodStepID("dcd", "retrain"))) || methodFailed(failed("12")) || methodFailed(errors.New("plain")) {
		t.Errorf("methodFailed: a method's step %v, another %v, no activity %v; want true, false, false",
			methodFailed(failed(workflows.MethodStepID("dcd", "retrain"))), methodFailed(failed("12")), methodFailed(errors.New("plain")))
	}
}

// A step that failed on every try until its retries ran out says so: its
// message is its last try's.
func TestFailureMessageTriesRanOut(t *testing.T) {
	fc := temporal.GetDefaultFailureConverter()
	f := &failurepb.Failure{Message: "activity error", Cause: fc.ErrorToFailure(errors.New("store: connection refused")), FailureInfo: &failurepb.Failure_ActivityFailureInfo{
		ActivityFailureInfo: &failurepb.ActivityFailureInfo{ActivityType: &commonpb.ActivityType{Name: "CachedShards"}, ActivityId: "9",
			RetryState: enumspb.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED}}}
	want := "activity CachedShards: store: connection refused (it failed on every try it had)"
	if msg := failureMessage(fmt.Errorf("workflow execution error: %w", fc.FailureToError(f))); msg != want {
		t.Errorf("failureMessage = %q, want %q", msg, want)
	}
	f.GetActivityFailureInfo().RetryState = enumspb.RETRY_STATE_NON_RETRYABLE_FAILURE
	if msg := failureMessage(fmt.Errorf("workflow execution error: %w", fc.FailureToError(f))); strings.Contains(msg, "every try") {
		t.Errorf("a failure not retried: %q", msg)
	}
}

// An activity that timed out on its last try is named with its method
// and the setting that bounds it, once, not the server's text twice.
func TestFailureMessageTimeout(t *testing.T) {
	fc := temporal.GetDefaultFailureConverter()
	for typ, want := range map[enumspb.TimeoutType]string{
		enumspb.TIMEOUT_TYPE_START_TO_CLOSE: "activity Retrain of all_pool: it ran past its time limit (a pass's timeouts.activity",
		enumspb.TIMEOUT_TYPE_HEARTBEAT:      "activity Retrain of all_pool: it sent no heartbeat in time (a pass's timeouts.heartbeat)",
	} {
		timeout := fc.ErrorToFailure(temporal.NewTimeoutError(typ, nil))
		f := &failurepb.Failure{Message: "activity error", Cause: timeout, FailureInfo: &failurepb.Failure_ActivityFailureInfo{
			ActivityFailureInfo: &failurepb.ActivityFailureInfo{ActivityType: &commonpb.ActivityType{Name: "Retrain"}, ActivityId: workflows.MethodStepID("all_pool", "retrain")}}}
		msg := failureMessage(fmt.Errorf("workflow execution error: %w", fc.FailureToError(f)))
		if !strings.HasPrefix(msg, want) {
			t.Errorf("%s: %q, want %q…", typ, msg, want)
		}
	}
}

func TestScheduleSpec(t *testing.T) {
	s, err := scheduleSpec("0 2 * * *", 0)
	if err != nil || !reflect.DeepEqual(s, client.ScheduleSpec{CronExpressions: []string{"0 2 * * *"}}) {
		t.Errorf("cron: %+v, %v", s, err)
	}
	s, err = scheduleSpec("", 24*time.Hour)
	if err != nil || !reflect.DeepEqual(s, client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: 24 * time.Hour}}}) {
		t.Errorf("every: %+v, %v", s, err)
	}
	for _, cron := range []string{"@daily", "CRON_TZ=Europe/Paris 0 2 * * *", "TZ=America/New_York @daily", "0 2 * * * # nightly"} {
		if s, err := scheduleSpec(cron, 0); err != nil || s.CronExpressions[0] != cron {
			t.Errorf("%s: %+v, %v", cron, s, err)
		}
	}
	for _, c := range []struct {
		cron  string
		every time.Duration
	}{{"", 0}, {"0 2 * * *", time.Hour}, {"0 2 *", 0}, {"", -time.Hour}, {"", time.Millisecond},
		{"CRON_TZ=Mars/Olympus 0 2 * * *", 0}, {"CRON_TZ= 0 2 * * *", 0}, {"TZ=Europe/Paris 0 2", 0},
		{"0 0 2 * * *", 0}, {"0 0 2 * * * #quartz", 0}, {"# nothing", 0}} { // six fields: second first (Quartz) or year last (Temporal)?
		if _, err := scheduleSpec(c.cron, c.every); err == nil {
			t.Errorf("scheduleSpec(%q, %s): no error", c.cron, c.every)
		}
	}
}

func TestParseCreateAndOptions(t *testing.T) {
	e, _, _ := testCLI()
	a, err := parseCreate(e, []string{"-config", "c.yaml", "-id", "nightly", "-every", "24h", "-paused"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	o, err := scheduleOptions(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	act, ok := o.Action.(*client.ScheduleWorkflowAction)
	if o.ID != "nightly" || !o.Paused || !ok || act.ID != "nightly-pass" || act.TaskQueue != workflows.CPUQueue ||
		!reflect.DeepEqual(act.Args, []any{workflows.PassInput{Config: cfg}}) || len(o.Spec.Intervals) != 1 {
		t.Errorf("scheduleOptions = %+v, action %+v", o, act)
	}
	for _, args := range [][]string{
		{"-config", "c.yaml", "-id", "s"},
		{"-config", "c.yaml", "-id", "s", "-cron", "0 2 * * *", "-every", "1h"},
		{"-id", "s", "-every", "1h"},
		{"-config", "c.yaml", "-every", "1h"},
		{"-config", "c.yaml", "-id", "s", "-every", "soon"},
	} {
		e, _, _ := testCLI()
		if _, err := parseCreate(e, args); exitStatus(err) != 2 {
			t.Errorf("parseCreate(%q): err %v, want exit 2", args, err)
		}
	}
	// -every 0s or a negative one is said to be no interval, not taken
	// for -every left out.
	for _, every := range []string{"0s", "-1h"} {
		code, _, stderr, _ := run(t, "schedule", "create", "-config", "c.yaml", "-id", "s", "-every", every)
		if code != 2 || !strings.Contains(stderr, "-every "+strings.TrimSuffix(every, "0m0s")) || !strings.Contains(stderr, "must be positive") {
			t.Errorf("create -every %s: exit %d, %q, want it said -every must be positive", every, code, stderr)
		}
		code, _, stderr, _ = run(t, "schedule", "update", "-every", every, "s")
		if code != 2 || !strings.Contains(stderr, "must be positive") {
			t.Errorf("update -every %s: exit %d, %q, want it said -every must be positive", every, code, stderr)
		}
	}
	if code, _, stderr, _ := run(t, "schedule"); code != 2 || !strings.Contains(stderr, "want create") {
		t.Errorf("schedule: exit %d, %q", code, stderr)
	}
	if code, _, _, dialed := run(t, "schedule", "describe", "s", "-address", "h:2"); code != 1 || dialed == nil || dialed.address != "h:2" {
		t.Errorf("schedule describe: exit %d, dialed %+v", code, dialed)
	}
}

func TestSpecString(t *testing.T) {
	// What the server returns for "0 2 * * *".
	daily := client.ScheduleCalendarSpec{
		Second: []client.ScheduleRange{{Start: 0}}, Minute: []client.ScheduleRange{{Start: 0}}, Hour: []client.ScheduleRange{{Start: 2}},
		DayOfMonth: []client.ScheduleRange{{Start: 1, End: 31, Step: 1}}, Month: []client.ScheduleRange{{Start: 1, End: 12, Step: 1}},
		DayOfWeek: []client.ScheduleRange{{Start: 0, End: 6, Step: 1}},
	}
	weekdays := daily
	weekdays.Minute = []client.ScheduleRange{{Start: 0, End: 59, Step: 15}}
	weekdays.DayOfWeek = []client.ScheduleRange{{Start: 1, End: 5}}
	s := &client.ScheduleSpec{
		Calendars: []client.ScheduleCalendarSpec{daily, weekdays},
		Intervals: []client.ScheduleIntervalSpec{{Every: 24 * time.Hour}, {Every: 90 * time.Minute, Offset: 30 * time.Second}},
	}
	want := "0 2 * * *; */15 2 * * 1-5; every 24h; every 1h30m offset 30s"
	if got := specString(s); got != want {
		t.Errorf("specString = %q, want %q", got, want)
	}
	if got := specString(nil); got != "-" {
		t.Errorf("specString(nil) = %q", got)
	}
	// With seconds, seven fields: six would read as minute to year.
	secs := daily
	secs.Second = []client.ScheduleRange{{Start: 30}}
	if got := specString(&client.ScheduleSpec{Calendars: []client.ScheduleCalendarSpec{secs}}); got != "30 0 2 * * * *" {
		t.Errorf("specString with seconds = %q, want 30 0 2 * * * *", got)
	}
	// With a year and no seconds, seven fields too, as -cron takes back.
	year := daily
	year.Year = []client.ScheduleRange{{Start: 2027}}
	got := specString(&client.ScheduleSpec{Calendars: []client.ScheduleCalendarSpec{year}})
	if got != "0 0 2 * * * 2027" {
		t.Errorf("specString with a year = %q, want 0 0 2 * * * 2027", got)
	}
	if _, err := scheduleSpec(got, 0); err != nil {
		t.Errorf("-cron %q, as describe writes it: %v", got, err)
	}
}

// A train-head job's image that is gone is an unreadable reject, as in a
// pass, not the trainer's failure; one that reads is read.
func TestTrainHeadImageReader(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.WriteAll(ctx, "a.png", []byte("png"), nil); err != nil {
		t.Fatal(err)
	}
	read := imageReader(&store.Buckets{}, b)
	if data, err := read(ctx, "a.png"); err != nil || string(data) != "png" {
		t.Errorf("a.png: %q, %v", data, err)
	}
	if _, err := read(ctx, "gone.png"); !errors.Is(err, embed.ErrUnreadable) {
		t.Errorf("gone.png: %v, want embed.ErrUnreadable", err)
	}
}

// The same output, with or without its trailing slash, is the same pack.
func TestPackIDTrailingSlash(t *testing.T) {
	if id := packID(strings.Repeat("p/", 150)); checkID("-id", id) != nil {
		t.Errorf("the default ID of a long output, %q: %v", id, checkID("-id", id))
	}
	if a, b := packID("pool-wds/"), packID("pool-wds"); a != b {
		t.Errorf("packID: %q and %q", a, b)
	}
	if packID("pool/wds") == packID("pool-wds") {
		t.Error("pool/wds and pool-wds share a pack ID")
	}
	// A pack running under that ID into either spelling is this pack,
	// which the command watches instead of refusing (and advising a
	// second pack into the same output).
	ds := schemas.Dataset{Manifest: "m.csv"}
	running := workflows.PackInput{Dataset: ds, Out: "pool-wds/", PerArchive: 1000}
	if !samePackInput(running, workflows.PackInput{Dataset: ds, Out: "pool-wds", PerArchive: 1000}) {
		t.Error("pool-wds/ and pool-wds are two packs")
	}
	for _, other := range []workflows.PackInput{
		{Dataset: ds, Out: "pool-wds2", PerArchive: 1000},
		{Dataset: ds, Out: "pool-wds", PerArchive: 500},
		{Dataset: schemas.Dataset{Manifest: "n.csv"}, Out: "pool-wds", PerArchive: 1000},
	} {
		if samePackInput(running, other) {
			t.Errorf("%+v is the pack %+v", other, running)
		}
	}
}

// train-head embeds the target where -ep says, else where the config puts
// the target, else where the worker that runs it embeds (DCD_EP).
func TestTrainHeadProvider(t *testing.T) {
	job := func(ep string) schemas.TrainJob { return schemas.TrainJob{Target: schemas.Model{EP: ep}} }
	for _, c := range []struct{ flag, target, env, want string }{
		{"", "", "", "cpu"},
		{"", "", "cuda", "cuda"},
		{"", "cuda", "cpu", "cuda"},
		{"cpu", "cuda", "cuda", "cpu"},
	} {
		t.Setenv("DCD_EP", c.env)
		if got := (trainHeadArgs{ep: c.flag}).provider(job(c.target)); got != c.want {
			t.Errorf("-ep %q, target ep %q, DCD_EP %q: %s, want %s", c.flag, c.target, c.env, got, c.want)
		}
	}
	e, _, _ := testCLI()
	if _, err := parseTrainHead(e, []string{"-job", "j.json", "-ep", "gpu"}); err == nil || !strings.Contains(err.Error(), "gpu") {
		t.Errorf("-ep gpu: %v, want an error naming it", err)
	}
}

// `result -json` prints eval.json from storage when the pass's result
// left the per-class accuracies out, and only then.
func TestResultPerClassLeftOut(t *testing.T) {
	ev := activities.Eval{Classes: []string{"a", "b"}, Methods: []activities.Method{{Method: "none", TestPerClass: []*float64{nil, nil}}}}
	if perClassLeftOut(ev) || !perClassLeftOut(ev.Totals()) {
		t.Errorf("left out: whole %v, totals %v", perClassLeftOut(ev), perClassLeftOut(ev.Totals()))
	}
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "runs", "r"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "runs", "r", "eval.json"), []byte(`{"classes":["a","b"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, err := readEval(ctx, "file://"+dir, "runs/r/eval.json"); err != nil || string(data) != `{"classes":["a","b"]}` {
		t.Errorf("readEval: %q, %v", data, err)
	}
	if _, err := readEval(ctx, "file://"+dir, ""); err == nil {
		t.Error("readEval of no key: no error")
	}
}

// A config's name makes the pass's default ID, checked as -id is: a name
// that begins with '-' would be read as a flag by status and cancel.
func TestDefaultIDChecked(t *testing.T) {
	cfg := testConfig()
	cfg.Name = "-nightly"
	b, err := configYAML(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pass.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr, dialed := run(t, "run", "-config", path)
	if code != 2 || !strings.Contains(stderr, "may not start with '-'") || dialed != nil {
		t.Errorf("a name beginning with '-': exit %d, dialed %v, stderr %q; want a usage error before dialing", code, dialed != nil, stderr)
	}
}

// Waiting for a pass's end outlives a frontend's restart: an unavailable
// server is asked again, an answer no retry changes (not found) is not.
func TestAwaitEndAsksAgain(t *testing.T) {
	defer func(d time.Duration) { awaitRetry = d }(awaitRetry)
	awaitRetry = time.Millisecond
	c := &endingClient{errs: []error{serviceerror.NewUnavailable("frontend restarting"), serviceerror.NewDeadlineExceeded("no answer")}}
	var res string
	if err := awaitEnd(context.Background(), c, "p", &res); err != nil || res != "done" || c.asked != 3 {
		t.Errorf("after two unavailable answers: %q, %v, asked %d times; want done, asked 3 times", res, err, c.asked)
	}
	c = &endingClient{errs: []error{serviceerror.NewNotFound("no such pass")}}
	if err := awaitEnd(context.Background(), c, "p", &res); err == nil || c.asked != 1 {
		t.Errorf("a pass not found: %v, asked %d times; want the error at once", err, c.asked)
	}
}

// endingClient answers GetWorkflow(...).Get with errs in turn, then "done".
type endingClient struct {
	client.Client
	errs  []error
	asked int
}

func (c *endingClient) GetWorkflow(context.Context, string, string) client.WorkflowRun {
	return endingRun{c: c}
}

type endingRun struct {
	client.WorkflowRun // the rest: not called
	c                  *endingClient
}

func (r endingRun) Get(_ context.Context, v any) error {
	r.c.asked++
	if len(r.c.errs) > 0 {
		err := r.c.errs[0]
		r.c.errs = r.c.errs[1:]
		return err
	}
	*v.(*string) = "done"
	return nil
}
func (r endingRun) GetWithOptions(ctx context.Context, v any, _ client.WorkflowRunGetOptions) error {
	return r.Get(ctx, v)
}

// train-head refuses what its export would refuse (here a head output
// named as a tensor the kept backbone computes) before it embeds or
// trains anything: the manifests it names are never read.
func TestTrainHeadExportCheckedFirst(t *testing.T) {
	g := &onnx.Graph{
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 2, 2}}},
		Outputs: []onnx.Value{{Name: "feat", Elem: onnx.Float, Shape: []int64{-1, 4}}},
		Nodes: []onnx.Node{
			{Op: "Relu", Inputs: []string{"image"}, Outputs: []string{"hidden"}},
			{Op: "Flatten", Inputs: []string{"hidden"}, Outputs: []string{"feat"}, Attrs: map[string]any{"axis": 1}},
		},
	}
	model, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	job := schemas.TrainJob{
		Target:  schemas.Model{Path: "m.onnx", Input: "image", Features: "feat", Logits: "hidden", Preprocess: preprocess.Spec{Layout: preprocess.LayoutNCHW, Channels: 1, Height: 2, Width: 2}},
		Classes: []string{"a", "b"}, Train: "missing/train.csv", DebugTrain: "missing/debug.csv", Model: "out.onnx", Output: "hidden",
	}
	data, _ := json.Marshal(job)
	for name, b := range map[string][]byte{"m.onnx": model, "job.json": data} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e, _, _ := testCLI()
	err = cmdTrainHead(context.Background(), e, []string{"-storage", "file://" + dir, "-job", "job.json", "-ort-lib", filepath.Join(dir, "no-ort.so")})
	if err == nil || !strings.Contains(err.Error(), "hidden") || strings.Contains(err.Error(), "missing/") || strings.Contains(err.Error(), "no-ort") {
		t.Fatalf("train-head with an output the backbone already computes: %v, want the export's refusal naming it, before ONNX Runtime or the manifests", err)
	}
	// A field the job does not hold (preprocess beside target, not in
	// it) is refused, not ignored.
	if err := os.WriteFile(filepath.Join(dir, "job.json"), []byte(`{"target": {"path": "m.onnx"}, "preprocess": {"scale": "byte"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	err = cmdTrainHead(context.Background(), e, []string{"-storage", "file://" + dir, "-job", "job.json", "-ort-lib", filepath.Join(dir, "no-ort.so")})
	if err == nil || !strings.Contains(err.Error(), `unknown field "preprocess"`) {
		t.Errorf("a job with a field it does not hold: %v, want it refused naming the field", err)
	}
}

// A job written by hand names the backbone's path and features, the
// classes, train (here an ImageFolder) and the model to write, as README's
// "A target for your own classes" shows: train-head reads the image input and its sizes from the model, as
// a pass does, and without a debug-train set trains on train alone. The
// head it writes tells the two classes of images apart.
func TestTrainHeadHandWrittenJob(t *testing.T) {
	g := &onnx.Graph{
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 2, 2}}},
		Outputs: []onnx.Value{{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, 4}}},
		Nodes: []onnx.Node{
			{Op: "Flatten", Inputs: []string{"image"}, Outputs: []string{"feat"}, Attrs: map[string]any{"axis": 1}},
			{Op: "Relu", Inputs: []string{"feat"}, Outputs: []string{"logits"}},
		},
	}
	model, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shade := func(v uint8) *image.Gray {
		img := image.NewGray(image.Rect(0, 0, 2, 2))
		for i := range img.Pix {
			img.Pix[i] = v + uint8(i)*3
		}
		return img
	}
	if err := os.MkdirAll(filepath.Join(dir, "train", "dark"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "train", "light"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		for _, c := range []struct {
			label string
			v     uint8
		}{{"dark", 10}, {"light", 200}} {
			var buf bytes.Buffer
			if err := png.Encode(&buf, shade(c.v+uint8(i))); err != nil {
				t.Fatal(err)
			}
			write(fmt.Sprintf("train/%s/%d.png", c.label, i), buf.Bytes())
		}
	}
	write("m.onnx", model)
	write("job.json", []byte(`{"target": {"path": "m.onnx", "features": "feat"},
		"classes": ["dark", "light"], "train": "train/", "model": "out.onnx"}`))
	write("job-debug.json", []byte(`{"target": {"path": "m.onnx", "features": "feat"},
		"classes": ["dark", "light"], "train": "train/", "debug_train": "train/", "model": "out.onnx"}`))
	// A debug-train set given as a folder is embedded too.
	e, stdout, _ := testCLI()
	if err := cmdTrainHead(context.Background(), e, []string{"-storage", "file://" + dir, "-job", "job-debug.json"}); err != nil ||
		!strings.Contains(stdout.String(), "embedded 40 debug-train images: 40 rows") {
		t.Errorf("train-head with a debug-train folder: %v\n%s", err, stdout)
	}

	e, stdout, _ = testCLI()
	if err := cmdTrainHead(context.Background(), e, []string{"-storage", "file://" + dir, "-job", "job.json"}); err != nil {
		t.Fatalf("train-head of a hand-written job: %v\n%s", err, stdout)
	}
	if !strings.Contains(stdout.String(), "no debug-train set") || !strings.Contains(stdout.String(), "embedded 40 train images: 40 rows") ||
		!strings.Contains(stdout.String(), `features "feat" → logits "dcd_logits"`) {
		t.Errorf("train-head's output does not say it trained on train's 40 images alone:\n%s", stdout)
	}
	out, err := os.ReadFile(filepath.Join(dir, "out.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	sess, err := ortrun.NewSession("out.onnx", out, []string{"image"}, []string{"probabilities"}, ortrun.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	spec := preprocess.Spec{Layout: preprocess.LayoutNCHW, Channels: 1, Height: 2, Width: 2}
	x := make([]float32, 2*spec.Size())
	for i, v := range []uint8{15, 215} {
		if err := spec.Fill(x[i*spec.Size():(i+1)*spec.Size()], shade(v)); err != nil {
			t.Fatal(err)
		}
	}
	res, err := sess.Run(ortrun.Tensor{Shape: []int64{2, 1, 2, 2}, Floats: x})
	if err != nil {
		t.Fatal(err)
	}
	if p := res[0].Floats; !(p[0] > p[1] && p[3] > p[2]) {
		t.Errorf("the head's probabilities for a dark and a light image: %v, want dark then light most likely", p)
	}
}

// A failed pass's eval.json of the methods that finished is shown when it
// is this run's (written after it started) and marked incomplete; an
// earlier run's, or a complete one, is not taken for it.
func TestFinishedEval(t *testing.T) {
	dir := t.TempDir()
	storage := "file://" + dir
	write := func(ev activities.Eval) {
		data, _ := json.Marshal(ev)
		p := filepath.Join(dir, filepath.FromSlash(activities.RunKey("p", "eval.json")))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	before := time.Now().Add(-time.Minute)
	if _, _, ok, unread := finishedEval(ctx, storage, "p", before); ok || unread == nil {
		t.Errorf("no eval.json, nor the pass's folder: taken as one %v, or not said unread (%v)", ok, unread)
	}
	// The pass's folder without eval.json: no method had finished.
	if err := os.MkdirAll(filepath.Join(dir, "runs", "p", "shards"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "runs", "p", "shards", "0.csv"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, unread := finishedEval(ctx, storage, "p", before); ok || unread != nil {
		t.Errorf("no eval.json in the pass's folder: taken as one %v, or said unread (%v)", ok, unread)
	}
	write(activities.Eval{Methods: []activities.Method{{Method: "none"}}, Incomplete: true, Failed: []string{"dcd"}})
	if _, ev, ok, _ := finishedEval(ctx, storage, "p", before); !ok || len(ev.Methods) != 1 || ev.Failed[0] != "dcd" {
		t.Errorf("this run's: %+v, %v", ev, ok)
	}
	if _, _, ok, unread := finishedEval(ctx, storage, "p", time.Now().Add(time.Minute)); ok || unread != nil {
		t.Errorf("an earlier run's eval.json: taken for this run's %v, or said unread (%v)", ok, unread)
	}
	write(activities.Eval{Methods: []activities.Method{{Method: "none"}}})
	if _, _, ok, _ := finishedEval(ctx, storage, "p", before); ok {
		t.Error("a complete eval.json taken for a failed pass's")
	}
}

// A pass whose worker was killed, with no other polling, is said to have
// lost it (the server's "no poller seen"), with what to do; another
// unanswered query is put down to a busy or a gone worker.
func TestUnanswered(t *testing.T) {
	gone := serviceerror.NewFailedPrecondition("no poller seen for task queue recently, worker may be down")
	// A listener for the server's address: the server is there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := ln.Addr().String()
	if got := unanswered("pass", fmt.Errorf("query: %w", gone), up); !strings.Contains(got, "no worker has polled the pass's workflows lately") || !strings.Contains(got, "start one (bin/worker)") {
		t.Errorf("unanswered, the worker gone: %q", got)
	}
	if got := unanswered("pass", context.DeadlineExceeded, up); !strings.Contains(got, busyOrGone) {
		t.Errorf("unanswered, a deadline: %q", got)
	}
	// The server stopped: it is said to be, not the worker.
	ln.Close()
	if got := unanswered("pass", context.DeadlineExceeded, up); !strings.Contains(got, "the Temporal server at "+up+" does not answer") {
		t.Errorf("unanswered, the server gone: %q", got)
	}
}

// configYAML encodes cfg as YAML under a comment, as a user writes one.
func configYAML(cfg schemas.Config, comment string) ([]byte, error) {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var head strings.Builder
	for _, line := range strings.Split(comment, "\n") {
		head.WriteString("# " + line + "\n")
	}
	return append([]byte(head.String()), b...), nil
}

// A paused schedule shows no next firings, and an active one none past
// (the server goes on listing those a pause passed over).
func TestNextTimes(t *testing.T) {
	now := time.Date(2026, 11, 29, 20, 51, 39, 0, time.UTC)
	times := []time.Time{now.Add(-39 * time.Second), now.Add(81 * time.Second), now.Add(201 * time.Second)}
	if got := nextTimes(times, false, now); !slices.Equal(got, []string{"2026-11-29T20:53:00Z", "2026-11-29T20:55:00Z"}) {
		t.Errorf("active: %q, want the two to come", got)
	}
	if got := nextTimes(times, true, now); len(got) != 0 {
		t.Errorf("paused: %q, want none", got)
	}
}
