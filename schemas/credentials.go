package schemas

import (
	"fmt"
	"regexp"

	"dcd/internal/redact"
)

// checkCredentials refuses a config that carries a credential in a URL:
// a user and password, or a query's signature or token (a presigned
// manifest, a SAS model URL). A config is the pass's workflow input,
// recorded in its history, where whoever reads the server reads it; the
// workers' own credentials (their environment) reach what they may read.
// Image URIs inside a manifest are data, not the config, and may be
// presigned.
func (c Config) checkCredentials() error {
	refs := []struct{ field, ref string }{
		{"classes_file", c.ClassesFile}, {"target.path", c.Target.Path},
		{"data.train", c.Data.Train.ref()}, {"data.test", c.Data.Test.ref()}, {"data.error_sample", c.Data.ErrorSample.ref()},
		{"data.error_heldout", c.Data.ErrorHeldout.ref()}, {"data.pool", c.Data.Pool.ref()},
	}
	if c.Similarity != nil {
		refs = append(refs, struct{ field, ref string }{"similarity.path", c.Similarity.Path})
	}
	if t := c.Retrain.Trainer; t != nil {
		for i, arg := range t.Command {
			for _, u := range urlsIn.FindAllString(arg, -1) {
				refs = append(refs, struct{ field, ref string }{fmt.Sprintf("retrain.trainer.command[%d]", i), u})
			}
		}
	}
	for _, r := range refs {
		if what := redact.Credential(r.ref); what != "" {
			return &FieldError{r.field, fmt.Sprintf("the URL holds %s: a config is recorded in the pass's history, where whoever reads the server reads it; copy the file into the workers' bucket, or give the workers access to it through their environment's credentials", what)}
		}
	}
	return nil
}

// urlsIn finds the URLs in a command's argument.
var urlsIn = regexp.MustCompile(`(?i)[a-z][a-z0-9+.-]*://[^\s"']*`)

// ref is the dataset's one location (Validate checks that it has one).
func (d Dataset) ref() string { return d.Prefix + d.Manifest + d.WebDataset }
