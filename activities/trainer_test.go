package activities

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"dcd/internal/dataset"
	"dcd/internal/redact"
)

// A cancelled trainer leaves nothing of its process group running, not
// even a helper that ignores SIGTERM after its leader has exited.
func TestTrainerGroupDiesWithIt(t *testing.T) {
	a := memActivities(t)
	pidFile := filepath.Join(t.TempDir(), "helper.pid")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for { // cancel once the helper is up
			if _, err := os.Stat(pidFile); err == nil {
				cancel()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	script := `(trap "" TERM; exec sleep 120) >/dev/null 2>&1 & echo $! > ` + pidFile + `; sleep 120`
	err := a.runTrainer(ctx, []string{"bash", "-c", script}, "runs/r/methods/dcd/train.log")
	if err == nil {
		t.Fatal("a cancelled trainer returned no error")
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil { // a zombie until reaped by init counts as gone soon
		if stat, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); strings.Contains(string(stat), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the helper (pid %d) that ignored SIGTERM outlived the trainer", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A trainer that exits 0 leaving a helper that holds its output open (a
// GPU monitor, a pool shutting down) has succeeded: the helper is killed,
// the trainer not run again.
func TestTrainerDoneThoughAHelperHoldsItsOutput(t *testing.T) {
	a := memActivities(t)
	err := a.runTrainer(context.Background(), []string{"bash", "-c", "sleep 120 & echo trained"}, "runs/r/methods/dcd/train.log")
	if err != nil {
		t.Fatalf("a trainer that exited 0: %v, want done", err)
	}
}

// The log quoted in a failure is what a terminal shows: a progress bar's
// last redraw, not each one since the line began, and a few KB at most.
func TestLastLinesAsShown(t *testing.T) {
	log := &tailBuffer{}
	fmt.Fprintf(log, "epoch 1\n")
	for i := range 10000 {
		fmt.Fprintf(log, "\r%3d%% |%s|", i%100, strings.Repeat("#", 40))
	}
	fmt.Fprintf(log, "\nTraceback: out of data\n")
	got := lastLines(log, 15, redact.Text)
	if want := " 99% |" + strings.Repeat("#", 40) + "|\nTraceback: out of data"; !strings.HasSuffix(got, want) || len(got) > 100 {
		t.Errorf("last lines:\n%q\nwant them ending %q, a redraw once", got, want)
	}
	long := &tailBuffer{}
	fmt.Fprintf(long, "%s\n", strings.Repeat("x", 1<<20))
	if got := lastLines(long, 15, redact.Text); len(got) > maxQuoted+len("…") {
		t.Errorf("a line of 1 MiB quoted as %d bytes, want at most %d", len(got), maxQuoted)
	}
	// A URL the cut falls in is redacted still (the cut would leave its
	// query without the scheme the redaction looks for).
	secret := &tailBuffer{}
	fmt.Fprintf(secret, "see https://acct.blob.core.windows.net/c/x?sv=1&sig=SECRET %s\n", strings.Repeat("z", maxQuoted-20))
	if got := lastLines(secret, 15, redact.Text); strings.Contains(got, "SECRET") {
		t.Errorf("a signature quoted where the cut fell in its URL: %.80q", got)
	}
}

// A trainer that prints the credentials it was handed (its environment, a
// shell's -x) or an HTTP header's token fails quoting its log without
// them, and its log in the bucket holds none.
func TestTrainerCredentialsMasked(t *testing.T) {
	a := memActivities(t)
	a.TrainerEnv = []string{"AWS_SECRET_ACCESS_KEY=S3CR3TKEY123", "AZURE_STORAGE_SAS_TOKEN=sv=1&sig=S3CR3TSAS", "DCD_EP=cpu"}
	const key = "runs/r/methods/dcd/train.log"
	err := a.runTrainer(context.Background(), []string{"bash", "-c",
		`echo "key=$AWS_SECRET_ACCESS_KEY sas=$AZURE_STORAGE_SAS_TOKEN ep=$DCD_EP"; echo "Authorization: Bearer S3CR3TBEARER"; echo "basic augmentation"; exit 3`}, key)
	if err == nil || strings.Contains(err.Error(), "S3CR3T") || !strings.Contains(err.Error(), "key=*** sas=*** ep=cpu") {
		t.Errorf("the trainer's failure: %v, want its log quoted with the credentials masked", err)
	}
	data, rerr := a.Bucket.ReadAll(context.Background(), key)
	if rerr != nil || strings.Contains(string(data), "S3CR3T") || !strings.Contains(string(data), "Bearer ***") || !strings.Contains(string(data), "basic augmentation") {
		t.Errorf("train.log: %q, %v; want it without the credentials", data, rerr)
	}
}

// Credentials printed otherwise than as given are masked too: a key of
// many lines whose first the failure's last lines leave out, escaped as
// JSON escapes it, quoted by a shell, split out of a connection string, a URL with a
// query, under names of other services.
func TestTrainerCredentialsMaskedAsPrinted(t *testing.T) {
	a := memActivities(t)
	var pem []string
	for i := range 22 {
		pem = append(pem, fmt.Sprintf("S3CR3TLINE%02dabcdefghijklmnop", i))
	}
	a.TrainerEnv = []string{
		"SSH_PRIVATE_KEY=" + strings.Join(pem, "\n"),
		"WEBHOOK_SECRET=https://hooks.example/services/S3CR3THOOK?v=1",
		"MYSQL_PWD=S3CR3TPW'ss",
		"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S3CR3TACCOUNTKEY==;EndpointSuffix=core.windows.net",
	}
	const key = "runs/r/methods/dcd/train.log"
	err := a.runTrainer(context.Background(), []string{"bash", "-c", `echo "escaped ${SSH_PRIVATE_KEY//$'\n'/\\n}"
printf '%s\n' "$SSH_PRIVATE_KEY" "$WEBHOOK_SECRET"
k=${AZURE_STORAGE_CONNECTION_STRING#*AccountKey=}; echo "key ${k%%;*}"
printf 'quoted %q\n' "$MYSQL_PWD"
exit 3`}, key)
	if err == nil || strings.Contains(err.Error(), "S3CR3T") {
		t.Errorf("the trainer's failure: %v, want the credentials masked", err)
	}
	data, rerr := a.Bucket.ReadAll(context.Background(), key)
	if rerr != nil || strings.Contains(string(data), "S3CR3T") {
		t.Errorf("train.log: %q, %v; want it without the credentials", data, rerr)
	}
}

// A trainer sees the worker's TrainerEnv beside its environment: `starter
// train-head` learns from it the library and provider the worker runs.
func TestTrainerEnv(t *testing.T) {
	a := memActivities(t)
	a.TrainerEnv = []string{"DCD_EP=cuda"}
	t.Setenv("DCD_TRAINER_ENV_TEST", "kept")
	key := "runs/r/methods/dcd/train.log"
	if err := a.runTrainer(context.Background(), []string{"bash", "-c", `echo "ep=$DCD_EP other=$DCD_TRAINER_ENV_TEST"`}, key); err != nil {
		t.Fatal(err)
	}
	log, err := a.Bucket.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "ep=cuda other=kept") {
		t.Errorf("the trainer's log:\n%s\nwant ep=cuda other=kept", log)
	}
}

// What a failed trainer printed reaches the pass's error, and so its
// history, and train.log without the queries of the URLs in it: DCD's
// own trainer prints its flags' defaults, DCD_STORAGE's among them.
func TestTrainerOutputRedacted(t *testing.T) {
	a := memActivities(t)
	const logKey = "runs/r/methods/dcd/train.log"
	err := a.runTrainer(context.Background(), []string{"bash", "-c", `echo '  -storage string (default "S3://b?token=SECRET")'; exit 2`}, logKey)
	if err == nil || !strings.Contains(err.Error(), `"S3://b"`) || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error %v: want the URL without its query", err)
	}
	log, _ := a.Bucket.ReadAll(context.Background(), logKey)
	if !strings.Contains(string(log), `"S3://b"`) || strings.Contains(string(log), "SECRET") {
		t.Errorf("train.log %q: want the URL without its query", log)
	}
}

// A trainer's log past its cap is cut at a line's start: a line cut in a
// URL would keep a query without the scheme redaction looks for.
func TestTrainerLogCutAtALine(t *testing.T) {
	var log tailBuffer
	fmt.Fprintf(&log, "%s\n", strings.Repeat("x", 100))
	// The cap falls 11 bytes into this line: in its URL's query.
	fmt.Fprintf(&log, "s3://b?token=SECRET %s\n", strings.Repeat("y", logCap-10))
	data, _ := log.snapshot()
	if strings.Contains(redact.Text(string(data)), "SECRET") || !strings.HasPrefix(string(data), "[... ") {
		t.Errorf("log after the cut: %q", data[max(0, len(data)-80):])
	}
	// Many small lines (a chatty trainer): the snapshot is the last cap's
	// worth from a line's start, and says how many bytes went before.
	var chatty tailBuffer
	written := 0
	for i := 0; written < 3*logCap; i++ {
		n, _ := fmt.Fprintf(&chatty, "line %d\n", i)
		written += n
	}
	data, _ = chatty.snapshot()
	header, kept, _ := strings.Cut(string(data), "\n")
	var dropped int
	fmt.Sscanf(header, "[... %d earlier bytes dropped]", &dropped)
	if len(kept) > logCap || len(kept) < logCap-20 || dropped+len(kept) != written || !strings.HasPrefix(kept, "line ") {
		t.Errorf("a chatty log: %d bytes kept, %d dropped, of %d written (header %q)", len(kept), dropped, written, header)
	}
}

// An external trainer's train manifest holds train's images; one whose
// label is not a class fails the pass naming it, as the built-in head's
// rows do, rather than be dropped by the trainer. Weak labels of the
// debug-train set are the trainer's to drop.
func TestTrainerManifestChecksTrainLabels(t *testing.T) {
	ctx := context.Background()
	a := memActivities(t)
	for i, label := range []string{"cat", "Cat"} {
		put(t, a, ShardKey("r", Train, i), (&dataset.Shard{Items: []dataset.Item{{ID: int64(i), Key: fmt.Sprintf("train/%d.png", i), Label: label}}}).Marshal())
	}
	classes := dataset.NewClasses([]string{"cat", "dog"})
	err := a.writeShardManifest(ctx, "train.csv", "r", Train, 2, &classes)
	if err == nil || !strings.Contains(err.Error(), `data.train: image train/1.png has label "Cat", which is not in classes`) {
		t.Errorf("a train label outside the classes: %v, want the pass failed naming it", err)
	}
	if err := a.writeShardManifest(ctx, "debug.csv", "r", Train, 2, nil); err != nil {
		t.Errorf("without classes to check: %v", err)
	}
}

// A trainer's argument has its placeholders replaced, in one scan (a value
// holding a placeholder's name is not replaced again), but a script's own
// ${work} is the shell's, and a name that is no placeholder stays.
func TestSubstitute(t *testing.T) {
	vars := map[string]string{"work": "/tmp/w", "model": "runs/r-{work}/model.onnx", "method": "dcd"}
	for arg, want := range map[string]string{
		"{model}":                            "runs/r-{work}/model.onnx",
		"--out={work}/x":                     "--out=/tmp/w/x",
		`work=mine; echo "${work}" {method}`: `work=mine; echo "${work}" dcd`,
		"awk '{print}' {nothing}":            "awk '{print}' {nothing}",
	} {
		if got := substitute(arg, vars); got != want {
			t.Errorf("substitute(%q) = %q, want %q", arg, got, want)
		}
	}
}

// A trainer's work folder that a killed worker left (its lock held by no
// process) is removed when a worker starts; one in use is not.
func TestRemoveStaleWork(t *testing.T) {
	dir := t.TempDir()
	inUse, done, err := newWorkDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	stale := filepath.Join(dir, workPrefix+"killed")
	if err := os.MkdirAll(filepath.Join(stale, "spool"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, workLock), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "not-ours")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if removed := RemoveStaleWork(dir); !slices.Equal(removed, []string{stale}) {
		t.Errorf("removed %q, want only %s", removed, stale)
	}
	for _, p := range []string{inUse, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v, want it kept", p, err)
		}
	}
	done()
	if _, err := os.Stat(inUse); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a work folder whose activity ended: %v, want it removed", err)
	}
}
