{{/*
The chart name, or nameOverride.
*/}}
{{- define "pulse-recursive-training.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else "<release>-<chart>" unless the
release name already contains the chart name. 63 characters at most (DNS label).
*/}}
{{- define "pulse-recursive-training.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "pulse-recursive-training.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "pulse-recursive-training.labels" -}}
helm.sh/chart: {{ include "pulse-recursive-training.chart" . }}
{{ include "pulse-recursive-training.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the release's pods; a component label tells the two controllers apart.
*/}}
{{- define "pulse-recursive-training.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pulse-recursive-training.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "pulse-recursive-training.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pulse-recursive-training.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Dask controller's objects.
*/}}
{{- define "pulse-recursive-training.daskControllerName" -}}
{{- printf "%s-dask" (include "pulse-recursive-training.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{/*
The controllers' image.
*/}}
{{- define "pulse-recursive-training.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Scheduling and security of both controller pods.
*/}}
{{- define "pulse-recursive-training.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The run policy's lists, comma-joined: the admission policy's CEL variables and the
operator's PULSE_OPERATOR_ALLOWED_* variables take the same strings.
*/}}
{{- define "pulse-recursive-training.runImage" -}}
{{- default (include "pulse-recursive-training.image" .) .Values.operator.runDefaults.image }}
{{- end }}

{{- define "pulse-recursive-training.policy.imagePrefixes" -}}
{{- join "," (default (list (include "pulse-recursive-training.runImage" .)) .Values.runPolicy.allowedImagePrefixes) }}
{{- end }}

{{- define "pulse-recursive-training.policy.serviceAccounts" -}}
{{- $names := .Values.runPolicy.allowedServiceAccountNames }}
{{- range .Values.runServiceAccounts }}{{ $names = append $names .name }}{{ end }}
{{- join "," (uniq $names) }}
{{- end }}

{{- define "pulse-recursive-training.policy.credentialSecrets" -}}
{{- join "," .Values.runPolicy.allowedCredentialSecrets }}
{{- end }}

{{- define "pulse-recursive-training.policy.s3Endpoints" -}}
{{- join "," .Values.runPolicy.allowedS3Endpoints }}
{{- end }}
