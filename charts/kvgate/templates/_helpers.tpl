{{/* Names, labels and the pieces several templates share. */}}

{{- define "kvgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvgate.fullname" -}}
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

{{/* A component's resource name: <fullname>-<suffix>, within 63 characters. */}}
{{- define "kvgate.componentName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "kvgate.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "kvgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of a component: include "kvgate.selectorLabels" (list . "gateway") */}}
{{- define "kvgate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "kvgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "kvgate.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "kvgate.chart" $root }}
{{ include "kvgate.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: kvgate
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kvgate.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "kvgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Discovery in another namespace than the gateway's; else the gateway's own, from the downward API. */}}
{{- define "kvgate.discoveryNamespaceSet" -}}
{{- if and .Values.discovery.namespace (not (include "kvgate.simulated" .)) }}true{{ end }}
{{- end }}

{{- define "kvgate.discoveryNamespace" -}}
{{- if include "kvgate.simulated" . }}
{{- .Release.Namespace }}
{{- else }}
{{- default .Release.Namespace .Values.discovery.namespace }}
{{- end }}
{{- end }}

{{- define "kvgate.simulated" -}}
{{- if .Values.simulator.enabled }}true{{ end }}
{{- end }}

{{/* With the simulated fleet on, the gateway follows it through the API; else discovery.kind says. */}}
{{- define "kvgate.discoveryKind" -}}
{{- if include "kvgate.simulated" . }}kubernetes{{ else }}{{ .Values.discovery.kind }}{{ end }}
{{- end }}

{{/* The Service whose EndpointSlices discovery follows: the simulated fleet's, else the one named. */}}
{{- define "kvgate.discoveryService" -}}
{{- if include "kvgate.simulated" . }}
{{- include "kvgate.componentName" (list . "sim") }}
{{- else }}
{{- .Values.discovery.service }}
{{- end }}
{{- end }}

{{/* What discovery reads through the API: endpointslices or pods. */}}
{{- define "kvgate.discoveryResource" -}}
{{- if include "kvgate.discoveryService" . }}endpointslices{{ else }}pods{{ end }}
{{- end }}

{{- define "kvgate.usesRedis" -}}
{{- if or .Values.redis.enabled (eq .Values.index.backend "redis") }}true{{ end }}
{{- end }}

{{- define "kvgate.redisUrl" -}}
{{- if .Values.index.redis.url }}
{{- .Values.index.redis.url }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "kvgate.componentName" (list . "redis")) }}
{{- end }}
{{- end }}

{{/* TLS to Redis: for an external Redis only (the bundled one speaks plain TCP inside the cluster). */}}
{{- define "kvgate.redisTls" -}}
{{- if and (include "kvgate.usesRedis" .) .Values.index.redis.url .Values.index.redis.tls.secretName }}true{{ end }}
{{- end }}

{{- define "kvgate.secretsDir" -}}/etc/kvgate/secrets{{- end }}

{{/* The gateway's configuration file, from the values. */}}
{{- define "kvgate.gatewayConfig" -}}
{{- $values := .Values }}
{{- $d := $values.discovery }}
{{- $kind := include "kvgate.discoveryKind" . }}
{{- $discovery := dict "kind" $kind "interval_s" $d.intervalSeconds }}
{{- with $d.models }}{{ $_ := set $discovery "models" . }}{{ end }}
{{- with $d.port }}{{ $_ := set $discovery "port" (int .) }}{{ end }}
{{- if eq $kind "kubernetes" }}
{{- if include "kvgate.discoveryNamespaceSet" . }}
{{- $_ := set $discovery "namespace" .Values.discovery.namespace }}
{{- end }}
{{- $_ := set $discovery "port_name" $d.portName }}
{{- $_ := set $discovery "kv_events_port_name" $d.kvEventsPortName }}
{{- $_ := set $discovery "kv_events_replay_port_name" $d.kvReplayPortName }}
{{- with include "kvgate.discoveryService" . }}
{{- $_ := set $discovery "service" . }}
{{- else }}
{{- $_ := set $discovery "label_selector" $d.labelSelector }}
{{- end }}
{{- else if eq $kind "dns" }}
{{- $_ := set $discovery "dns_name" $d.dnsName }}
{{- with $d.kvEventsPort }}{{ $_ := set $discovery "kv_events_port" (int .) }}{{ end }}
{{- with $d.kvReplayPort }}{{ $_ := set $discovery "kv_events_replay_port" (int .) }}{{ end }}
{{- end }}
{{- $config := dict
  "host" "0.0.0.0"
  "port" (int $values.gateway.port)
  "policy" $values.gateway.policy
  "profile" $values.gateway.profile
  "log_level" $values.gateway.logLevel
  "shutdown_grace_s" $values.gateway.shutdownGraceSeconds
  "discovery" $discovery
}}
{{- $auth := dict }}
{{- with $values.secrets.apiKeys }}{{ if .name }}
{{- $_ := set $auth "api_keys_file" (printf "%s/api-keys/%s" (include "kvgate.secretsDir" $) .key) }}
{{- end }}{{ end }}
{{- with $values.secrets.adminToken }}{{ if .name }}
{{- $_ := set $auth "admin_token_file" (printf "%s/admin-token/%s" (include "kvgate.secretsDir" $) .key) }}
{{- end }}{{ end }}
{{- with $auth }}{{ $_ := set $config "auth" . }}{{ end }}
{{- if include "kvgate.usesRedis" . }}
{{- $redis := dict "url" (include "kvgate.redisUrl" .) }}
{{- if $values.index.redis.passwordSecret.name }}
{{- $_ := set $redis "password_file" (printf "%s/redis-password/%s" (include "kvgate.secretsDir" .) $values.index.redis.passwordSecret.key) }}
{{- end }}
{{- with $values.index.redis.tls }}
{{- if include "kvgate.redisTls" $ }}
{{- $dir := printf "%s/redis-tls" (include "kvgate.secretsDir" $) }}
{{- $_ := set $redis "tls_ca_file" (printf "%s/%s" $dir .caKey) }}
{{- if .certKey }}{{ $_ := set $redis "tls_cert_file" (printf "%s/%s" $dir .certKey) }}{{ end }}
{{- if .keyKey }}{{ $_ := set $redis "tls_key_file" (printf "%s/%s" $dir .keyKey) }}{{ end }}
{{- end }}
{{- end }}
{{- $_ := set $config "index" (dict "backend" "redis" "redis" $redis) }}
{{- end }}
{{- if $values.kvEvents.enabled }}
{{- $_ := set $config "precise" (dict "enabled" true "tokenizer" $values.kvEvents.tokenizer "chat_template" $values.kvEvents.chatTemplate "block_size" (int $values.kvEvents.blockSize)) }}
{{- end }}
{{- toYaml (mustMergeOverwrite $config (deepCopy $values.gateway.config)) }}
{{- end }}

{{/* Checks that stop a release that could not work, with a message saying what to set. */}}
{{- define "kvgate.validate" -}}
{{- $d := .Values.discovery }}
{{- $g := .Values.gateway }}
{{- if lt (int $g.terminationGracePeriodSeconds) (int (add $g.preStopSleepSeconds $g.shutdownGraceSeconds)) }}
{{- fail "gateway.terminationGracePeriodSeconds must be at least preStopSleepSeconds + shutdownGraceSeconds" }}
{{- end }}
{{- $kind := include "kvgate.discoveryKind" . }}
{{- if and (eq $kind "kubernetes") (not (include "kvgate.discoveryService" .)) (not $d.labelSelector) }}
{{- fail "discovery.kind is kubernetes: set discovery.service (your vLLM Service) or discovery.labelSelector" }}
{{- end }}
{{- if and (eq $kind "dns") (or (not $d.dnsName) (not $d.port)) }}
{{- fail "discovery.kind is dns: set discovery.dnsName and discovery.port" }}
{{- end }}
{{- if and (eq $kind "static") (not (dig "replicas" list .Values.gateway.config)) }}
{{- fail "discovery.kind is static: list the replica URLs in gateway.config.replicas" }}
{{- end }}
{{- if and .Values.index.redis.tls.secretName (not .Values.index.redis.url) }}
{{- fail "index.redis.tls is for an external Redis: set index.redis.url (rediss://...)" }}
{{- end }}
{{- if and (eq .Values.index.backend "redis") (not (include "kvgate.redisUrl" .)) }}
{{- fail "index.backend is redis: set index.redis.url or enable the bundled redis" }}
{{- end }}
{{- end }}
