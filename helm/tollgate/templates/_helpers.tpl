{{/*
Names. The full name is cut at 52 characters so that every name made from it
(the longest suffix is "-dashboard") stays a valid 63-character DNS label.
*/}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Labels. Called with (dict "ctx" $ "component" "server"|"polar"|"migrate"|...).
*/}}
{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ include "tollgate.chart" .ctx }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{/*
The mode (see values.yaml): "embedded", "postgresql" or "production".
Helpers that answer yes/no print "true" or nothing, for `if include ...`.
*/}}
{{- define "tollgate.database.enabled" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{- define "tollgate.redis.enabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{- define "tollgate.mode" -}}
{{- if not (include "tollgate.database.enabled" .) }}embedded
{{- else if include "tollgate.redis.enabled" . }}production
{{- else }}postgresql
{{- end }}
{{- end }}

{{/*
The chart-made Secret (admin token, and the URLs given as values) and where
each secret actually comes from: the chart's Secret or the user's.
*/}}
{{- define "tollgate.secretName" -}}
{{- include "tollgate.fullname" . }}
{{- end }}

{{- define "tollgate.chartSecret.enabled" -}}
{{- if or (not .Values.adminToken.existingSecret) .Values.database.url .Values.redis.url }}true{{ end }}
{{- end }}

{{- define "tollgate.database.secretRef" -}}
{{- if .Values.database.existingSecret -}}
name: {{ .Values.database.existingSecret }}
key: {{ .Values.database.existingSecretKey }}
{{- else -}}
name: {{ include "tollgate.secretName" . }}
key: database-url
{{- end }}
{{- end }}

{{- define "tollgate.redis.secretRef" -}}
{{- if .Values.redis.existingSecret -}}
name: {{ .Values.redis.existingSecret }}
key: {{ .Values.redis.existingSecretKey }}
{{- else -}}
name: {{ include "tollgate.secretName" . }}
key: redis-url
{{- end }}
{{- end }}

{{- define "tollgate.adminToken.secretRef" -}}
{{- if .Values.adminToken.existingSecret -}}
name: {{ .Values.adminToken.existingSecret }}
key: {{ .Values.adminToken.existingSecretKey }}
{{- else -}}
name: {{ include "tollgate.secretName" . }}
key: admin-token
{{- end }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the config file and the SQLite file live in the container. */}}
{{- define "tollgate.configDir" -}}/etc/tollgate{{- end }}
{{- define "tollgate.dataDir" -}}/var/lib/tollgate{{- end }}

{{/*
The server's config.toml. Chart-owned settings first, then `config` over
them (the schema keeps chart-owned keys out of `config`). Helm reads every
number in values as a float, which toToml would write as 25.0, so whole
numbers are turned back into integers for the server's integer settings.
*/}}
{{- define "tollgate.configToml" -}}
{{- $settings := dict
  "listen" (printf "0.0.0.0:%d" (int .Values.service.port))
  "metrics_listen" (ternary (printf "0.0.0.0:%d" (int .Values.metrics.port)) "" .Values.metrics.enabled)
  "log_format" "json"
  "data_dir" (include "tollgate.dataDir" .)
  "migrate_on_start" (not (include "tollgate.database.enabled" .))
  "shutdown_grace_seconds" (int64 .Values.shutdownGraceSeconds)
  "otlp_endpoint" .Values.otlpEndpoint
}}
{{- range $key, $value := .Values.config }}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $_ := set $settings $key (int64 $value) }}
{{- else }}
{{- $_ := set $settings $key $value }}
{{- end }}
{{- end }}
{{- toToml $settings }}
{{- end }}

{{/*
The restricted Pod Security Standard, for every pod of the chart: the image
runs as uid/gid 10001 and needs no capability and no writable root.
*/}}
{{- define "tollgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tollgate.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Pod scheduling settings shared by the server and the Polar adapter; called
with the values object holding them.
*/}}
{{- define "tollgate.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot make without printing the value: a URL may carry a
password, and a schema error quotes the value it refuses.
*/}}
{{- define "tollgate.validate" -}}
{{- with .Values.database.url }}
{{- if not (regexMatch "^postgres(ql)?://" .) }}
{{- fail "database.url must start with postgres:// or postgresql://" }}
{{- end }}
{{- end }}
{{- with .Values.redis.url }}
{{- if not (regexMatch "^rediss?://" .) }}
{{- fail "redis.url must start with redis:// or rediss://" }}
{{- end }}
{{- end }}
{{- end }}
