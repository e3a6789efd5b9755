{{/*
Chart name, truncated to 63 characters (the DNS-1123 label limit).
*/}}
{{- define "shardlease.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters.  If the release name already
contains the chart name it is used as is.
*/}}
{{- define "shardlease.fullname" -}}
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
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "shardlease.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "shardlease.labels" -}}
helm.sh/chart: {{ include "shardlease.chart" . }}
{{ include "shardlease.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shardlease
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels (immutable once deployed: keep them minimal).
*/}}
{{- define "shardlease.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shardlease.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "shardlease.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shardlease.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the metrics Service (suffix kept within 63 characters).
*/}}
{{- define "shardlease.metricsServiceName" -}}
{{- printf "%s-metrics" (include "shardlease.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
The container image: repository, then "@digest" if a digest is given, else ":tag"
(tag "" means the chart's appVersion).
*/}}
{{- define "shardlease.image" -}}
{{- $registry := .Values.image.registry }}
{{- $repo := .Values.image.repository }}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Whether a shared Redis is configured (else each pod would start its own embedded Redis).
*/}}
{{- define "shardlease.redisConfigured" -}}
{{- $r := .Values.redis }}
{{- if or $r.url $r.host $r.existingSecret.urlKey }}true{{ end }}
{{- end }}

{{/*
The worker's graceful shutdown bound in whole seconds (config.shutdownGrace, rounded up).
*/}}
{{- define "shardlease.shutdownGrace" -}}
{{- $g := float64 .Values.config.shutdownGrace }}
{{- $c := ceil $g | int }}
{{- $c }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the explicit value (checked to exceed the shutdown bound),
else the shutdown bound plus terminationGraceMarginSeconds.
*/}}
{{- define "shardlease.terminationGracePeriodSeconds" -}}
{{- $grace := include "shardlease.shutdownGrace" . | int }}
{{- if .Values.terminationGracePeriodSeconds }}
{{- $t := .Values.terminationGracePeriodSeconds | int }}
{{- if le $t $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.shutdownGrace (%d s), or the kubelet kills workers before they hand their shards over; leave it empty to use shutdownGrace + terminationGraceMarginSeconds" $t $grace) }}
{{- end }}
{{- $t }}
{{- else }}
{{- add $grace .Values.terminationGraceMarginSeconds }}
{{- end }}
{{- end }}

{{/*
The Redis URL environment: SHARDLEASE_REDIS_URL (and REDIS_PASSWORD when the password
comes from a Secret and is composed into the URL with $(REDIS_PASSWORD)).
*/}}
{{- define "shardlease.redisEnv" -}}
{{- $r := .Values.redis }}
{{- $secret := $r.existingSecret }}
{{- $sources := 0 }}
{{- if $r.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if $secret.urlKey }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.host }}{{ $sources = add1 $sources }}{{ end }}
{{- if gt $sources 1 }}
{{- fail "redis: give only one of redis.url, redis.existingSecret.urlKey or redis.host" }}
{{- end }}
{{- if and (or $secret.urlKey $secret.passwordKey) (not $secret.name) }}
{{- fail "redis.existingSecret.name is required with redis.existingSecret.urlKey or passwordKey" }}
{{- end }}
{{- if and $secret.passwordKey (not $r.host) }}
{{- fail "redis.existingSecret.passwordKey needs redis.host (the URL is composed from host, port, db, username and the password)" }}
{{- end }}
{{- if and $r.tls.enabled $r.url (not (hasPrefix "rediss://" $r.url)) }}
{{- fail "redis.tls.enabled needs a rediss:// redis.url" }}
{{- end }}
{{- if $secret.urlKey }}
- name: SHARDLEASE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret.name | quote }}
      key: {{ $secret.urlKey | quote }}
{{- else if $r.url }}
- name: SHARDLEASE_REDIS_URL
  value: {{ $r.url | quote }}
{{- else if $r.host }}
{{- $scheme := ternary "rediss" "redis" (and $r.tls.enabled true) }}
{{- $auth := "" }}
{{- if $secret.passwordKey }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret.name | quote }}
      key: {{ $secret.passwordKey | quote }}
{{- $auth = printf "%s:$(REDIS_PASSWORD)@" $r.username }}
{{- else if $r.username }}
{{- $auth = printf "%s@" $r.username }}
{{- end }}
- name: SHARDLEASE_REDIS_URL
  value: {{ printf "%s://%s%s:%d/%d" $scheme $auth $r.host ($r.port | int) ($r.db | int) | quote }}
{{- end }}
{{- end }}
