// kstatus reads one Kubernetes object (JSON or YAML) on stdin and prints what
// sigs.k8s.io/cli-utils' kstatus library computes for it, as one JSON line:
// {"status": "InProgress|Current|Failed|...", "message": "..."}.
// Flux's kustomize-controller and kpt judge health with this same function.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err == nil {
		// Through JSON, so that numbers decode as int64 the way API clients decode them.
		var object unstructured.Unstructured
		if raw, err = yaml.YAMLToJSON(raw); err == nil {
			err = object.UnmarshalJSON(raw)
		}
		if err == nil {
			var result *status.Result
			if result, err = status.Compute(&object); err == nil {
				err = json.NewEncoder(os.Stdout).Encode(map[string]string{
					"status": result.Status.String(), "message": result.Message,
				})
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
}
