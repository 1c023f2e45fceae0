package activities

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"google.golang.org/api/googleapi"

	"dcd/internal/dataset"
	"dcd/internal/devserver"
	"dcd/internal/embed"
	"dcd/internal/store"
	"dcd/schemas"
)

func TestClassesFile(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.WriteAll(ctx, "meta/classes.txt", []byte("tabby cat\r\n\ngolden retriever\nsports car\n"), nil)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "classes.txt"), []byte("a\nb\n"), 0o644)
	a := &Activities{Bucket: b, Buckets: &store.Buckets{}}
	defer a.Buckets.Close()

	got, err := a.Classes(ctx, ClassesInput{File: "meta/classes.txt"})
	if want := []string{"tabby cat", "golden retriever", "sports car"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("classes %q, %v; want %q", got, err, want)
	}
	got, err = a.Classes(ctx, ClassesInput{File: "file://" + dir + "/classes.txt"})
	if err != nil || !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("classes from a file:// URL: %q, %v", got, err)
	}

	for name, c := range map[string]struct{ data, want string }{
		"missing.txt":  {"", "cannot read"},
		"repeated.txt": {"a\nb\na\n", `line 3 repeats class "a" of line 1`},
		"one.txt":      {"only\n", "at least 2"},
	} {
		if c.data != "" {
			b.WriteAll(ctx, name, []byte(c.data), nil)
		}
		_, err := a.Classes(ctx, ClassesInput{File: name})
		var appErr *temporal.ApplicationError
		if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), "classes_file") ||
			!strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a non-retryable error naming classes_file and the file, saying %q", name, err, c.want)
		}
	}
}

// E_sample, E_heldout and test may not share an image: the later set's is
// named with the earlier set; nor may test or E_heldout list one twice, or
// share one with train.
func TestCheckApart(t *testing.T) {
	a := memActivities(t)
	ctx := context.Background()
	write := func(ds string, shard int, keys ...string) {
		var s dataset.Shard
		for i, k := range keys {
			s.Items = append(s.Items, dataset.Item{ID: int64(i), Key: k, Label: "a"})
		}
		if err := store.WriteAll(ctx, a.Bucket, ShardKey("r", ds, shard), s.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	write(ErrorSample, 0, "e/1.png", "e/2.png", "e/2.png") // a query twice is harmless
	write(ErrorHeldout, 0, "h/1.png")
	write(ErrorHeldout, 1, "h/2.png", "h/1.png")
	write(Test, 0, "t/1.png")
	sets := []ApartSet{{Name: ErrorSample, Shards: 1}, {Name: ErrorHeldout, Shards: 2}, {Name: Test, Shards: 1}}
	err := a.CheckApart(ctx, ApartInput{Run: "r", Sets: sets})
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), "data.error_heldout: image h/1.png is listed twice") {
		t.Errorf("an E_heldout image listed twice, which would count twice: %v", err)
	}
	write(ErrorHeldout, 1, "h/2.png")
	if err := a.CheckApart(ctx, ApartInput{Run: "r", Sets: sets}); err != nil {
		t.Fatalf("distinct sets: %v", err)
	}
	write(Test, 0, "t/1.png", "e/2.png")
	err = a.CheckApart(ctx, ApartInput{Run: "r", Sets: sets})
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), "data.test: image e/2.png is also in data.error_sample") {
		t.Errorf("a test image that is an E_sample image: %v", err)
	}

	// Train is probed against test and E_heldout: an image trained on
	// measures nothing; its own repeats are its business.
	write(Test, 0, "t/1.png")
	write(Train, 0, "tr/1.png", "tr/1.png", "e/1.png")
	apart := []ApartSet{{Name: ErrorHeldout, Shards: 2}, {Name: Test, Shards: 1}, {Name: Train, Shards: 1, Probe: true}}
	if err := a.CheckApart(ctx, ApartInput{Run: "r", Sets: apart}); err != nil {
		t.Fatalf("train apart from test and E_heldout: %v", err)
	}
	write(Train, 0, "tr/1.png", "h/2.png")
	err = a.CheckApart(ctx, ApartInput{Run: "r", Sets: apart})
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), "data.train: image h/2.png is also in data.error_heldout") {
		t.Errorf("a train image that is an E_heldout image: %v", err)
	}

	// Labels: E_sample's may be anything (queries), test's and
	// E_heldout's must be classes.
	write(Test, 0, "t/1.png")
	classes := []string{"a", "b"}
	if err := a.CheckApart(ctx, ApartInput{Run: "r", Sets: sets, Classes: classes}); err != nil {
		t.Fatalf("labelled sets: %v", err)
	}
	var s dataset.Shard
	s.Items = []dataset.Item{{ID: 0, Key: "h/3.png", Label: "b"}, {ID: 1, Key: "h/4.png", Label: "cat"}}
	store.WriteAll(ctx, a.Bucket, ShardKey("r", ErrorHeldout, 1), s.Marshal())
	err = a.CheckApart(ctx, ApartInput{Run: "r", Sets: sets, Classes: classes})
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), `data.error_heldout: image h/4.png has label "cat", which is not in classes ["a" "b"]`) {
		t.Errorf("an E_heldout label that is no class: %v", err)
	}
	s.Items[1].Label = ""
	store.WriteAll(ctx, a.Bucket, ShardKey("r", ErrorHeldout, 1), s.Marshal())
	err = a.CheckApart(ctx, ApartInput{Run: "r", Sets: sets, Classes: classes})
	if err == nil || !strings.Contains(err.Error(), `data.error_heldout: image h/4.png has no label (an empty label, or a WebDataset sample without a .cls); expected one of classes ["a" "b"]`) {
		t.Errorf("an E_heldout image without a label: %v", err)
	}
}

// Plan fails for good on a bad manifest, naming the dataset, and leaves a
// store that is failing (S3's 503) to Temporal's retries.
func TestPlanRetriesOnlyWhatMayPass(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("<Error><Code>SlowDown</Code><Message>slow down</Message></Error>"))
	}))
	defer srv.Close()
	// A manifest whose GET the connection's close cuts mid-row: the
	// store's fault, which the next try may not meet, not the data's.
	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		w.Header().Set("Last-Modified", "Sat, 28 Nov 2026 12:00:00 GMT")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			w.Write([]byte("uri,label\n/a.png,c\n/b.p"))
		}
	}))
	defer cut.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "fake-access")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ENDPOINT_URL", "")

	a := memActivities(t)
	a.Buckets = &store.Buckets{}
	defer a.Buckets.Close()
	a.Bucket.WriteAll(context.Background(), "bad.csv", []byte("uri,label\na.png,cat\n,dog\n"), nil)
	var ts testsuite.WorkflowTestSuite
	ts.SetLogger(devserver.QuietLogger())
	env := ts.NewTestActivityEnvironment()
	env.RegisterActivity(a)
	for _, c := range []struct {
		manifest string
		final    bool
		says     string
	}{
		{"bad.csv", true, "line 3: empty uri"},
		{"s3://pool/m.csv?endpoint=" + srv.URL + "&use_path_style=true&region=us-east-1", false, "SlowDown"},
		{"s3://pool/m.csv?endpoint=" + cut.URL + "&use_path_style=true&region=us-east-1", false, "ended early"},
	} {
		_, err := env.ExecuteActivity(a.Plan, PlanInput{Run: "r", Name: Pool, Dataset: schemas.Dataset{Manifest: c.manifest}, ShardSize: 10})
		var appErr *temporal.ApplicationError
		final := errors.As(err, &appErr) && appErr.NonRetryable()
		if err == nil || final != c.final || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v (non-retryable: %v), want non-retryable %v saying %q", c.manifest, err, final, c.final, c.says)
		}
	}
}

// An image the store refuses is an unread reject; one too large, a reject
// of a file that is no image (a shard of nothing else must not fail as
// unreadable); an image read with credentials the store refuses is not a
// reject (the shard fails and is retried), or it would stay one in the
// cache once they were fixed.
func TestUnreadable(t *testing.T) {
	for _, c := range []struct {
		err            error
		unread, reject bool
	}{
		{&azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthorizationPermissionMismatch"}, true, false},
		{&googleapi.Error{Code: http.StatusNotFound}, true, false},
		{fmt.Errorf("%w: 300000000 bytes, more than %d", store.ErrTooLarge, MaxImageBytes), false, true},
		{fmt.Errorf("%w (10 bytes)", store.ErrPastEnd), false, true},
		{&azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthenticationFailed"}, false, false},
		{&azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthorizationFailure"}, false, false},
		{&googleapi.Error{Code: http.StatusUnauthorized}, false, false},
		{&azcore.ResponseError{StatusCode: http.StatusServiceUnavailable, ErrorCode: "ServerBusy"}, false, false},
	} {
		err := unreadable(fmt.Errorf("read: %w", c.err))
		if errors.Is(err, embed.ErrUnreadable) != c.unread || errors.Is(err, embed.ErrRejected) != c.reject {
			t.Errorf("%v: unread %v, rejected %v; want %v, %v", err, errors.Is(err, embed.ErrUnreadable), errors.Is(err, embed.ErrRejected), c.unread, c.reject)
		}
	}
}

// A classes file saved with a byte-order mark has it read as none of its
// first class's name.
func TestParseClassesBOM(t *testing.T) {
	got, err := ParseClasses("classes.txt", []byte("\ufeffcat\r\ndog\r\n"))
	if err != nil || !slices.Equal(got, []string{"cat", "dog"}) {
		t.Errorf("ParseClasses: %q, %v; want [cat dog]", got, err)
	}
}

// Plan checks the pool's and train's labels against the classes, before
// anything is embedded: a pool none of whose weak labels is a class fails,
// saying what its labels look like; one with some passes; train's must all
// be classes.
func TestPlanChecksLabels(t *testing.T) {
	a := memActivities(t)
	ctx := context.Background()
	manifests := map[string]string{
		"index.csv":     "uri,label\na.png,0\nb.png,9\nc.png,3\n",
		"floats.csv":    "uri,label\na.png,3.0\nb.png,7.0\n",
		"unlabeled.csv": "uri,label\na.png,\nb.png,1\nc.png,7\n",
		"other.csv":     "uri,label\na.png,cat\nb.png,dog\n",
		"some.csv":      "uri,label\na.png,cat\nb.png,three\n",
		"train.csv":     "uri,label\na.png,one\nb.png,1\n",
	}
	for k, v := range manifests {
		a.Bucket.WriteAll(ctx, k, []byte(v), nil)
	}
	classes := []string{"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
	var ts testsuite.WorkflowTestSuite
	ts.SetLogger(devserver.QuietLogger())
	env := ts.NewTestActivityEnvironment()
	env.RegisterActivity(a)
	for _, c := range []struct {
		name, manifest string
		says           string // "" for no error
	}{
		{Pool, "index.csv", `data.pool: none of its 3 images has a weak label that is a class of the target (its labels include "0", "9", "3"; classes ["zero"`},
		{Pool, "index.csv", "they look like class indices"},
		{Pool, "floats.csv", "whole numbers written as floats"},
		{Pool, "other.csv", `its labels include "cat", "dog"`},
		{Pool, "unlabeled.csv", `its labels include no label, "1", "7"`},
		{Pool, "unlabeled.csv", "they look like class indices"},
		{Pool, "some.csv", ""},
		{Train, "train.csv", `data.train: image b.png has label "1", which is not in classes`},
		{Train, "train.csv", "they look like class indices"},
		{Test, "index.csv", ""}, // CheckApart's, with the images' own names
	} {
		_, err := env.ExecuteActivity(a.Plan, PlanInput{Run: "r", Name: c.name, Dataset: schemas.Dataset{Manifest: c.manifest}, ShardSize: 10, Classes: classes})
		var appErr *temporal.ApplicationError
		switch {
		case c.says == "" && err != nil:
			t.Errorf("%s %s: %v, want it planned", c.name, c.manifest, err)
		case c.says != "" && (!errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), c.says)):
			t.Errorf("%s %s: %v, want a non-retryable error saying %q", c.name, c.manifest, err, c.says)
		}
	}
	// Without classes nothing is checked.
	if _, err := env.ExecuteActivity(a.Plan, PlanInput{Run: "r", Name: Pool, Dataset: schemas.Dataset{Manifest: "other.csv"}, ShardSize: 10}); err != nil {
		t.Errorf("a pool planned without classes: %v", err)
	}
}
